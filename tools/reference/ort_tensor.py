"""Run an ONNX model in onnxruntime (CPU) and save the value of one of its tensors.

Needs the pyenv `python3` with onnx, onnxruntime and numpy
(`pip install onnx onnxruntime numpy`). The Rust integration tests call it.

Run from the project root:
    python3 tools/reference/ort_tensor.py MODEL TENSOR INPUT.npy OUTPUT.npy

MODEL is any ONNX file (fixtures/*.onnx, ../shared/models/*.onnx, ...). TENSOR is the
name of any tensor a node produces (or a graph output); it is added as an extra graph
output, typed by shape inference (FLOAT with no shape when inference cannot type it).
INPUT.npy is float32 [N, ...] in the model's own input layout (NCHW, NHWC or flat).
A model whose batch dimension is fixed to 1 is run image by image.
Writes OUTPUT.npy: TENSOR's value as float32 [N, D] (each sample flattened, C order).
Exit codes: 0 success, 1 runtime error, 2 usage error.
"""

import os
import sys

import numpy as np
import onnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ort_common import flat, run, with_output  # noqa: E402


def main(argv):
    if len(argv) != 4:
        print("usage: ort_tensor.py MODEL TENSOR INPUT.npy OUTPUT.npy", file=sys.stderr)
        return 2
    model_path, tensor, input_path, output_path = argv
    try:
        model = with_output(onnx.load(model_path), tensor)
        (value,) = run(model, np.load(input_path), [tensor])
        np.save(output_path, flat(value))
    except Exception as error:
        print(f"ort_tensor: {model_path}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Run an ONNX model in onnxruntime (CPU) and save its first output.

Needs the pyenv `python3` with onnx, onnxruntime and numpy
(`pip install onnx onnxruntime numpy`). The Rust integration tests call it.

Run from the project root:
    python3 tools/reference/ort_run.py [--check] [--batch N] MODEL INPUT.npy OUTPUT.npy

INPUT.npy is float32 [N, ...] in the model's own input layout (NCHW, NHWC or flat).
A model whose batch dimension is fixed to 1 is run image by image, unless --batch N
asks for batches of exactly N images (the last may be smaller): onnxruntime then
refuses such a model, which is how the tests show that a model's batch is dynamic.
With --check, `onnx.checker.check_model(model, full_check=True)` runs first; when it
fails, the checker's message goes to stderr and the exit code is 1 (nothing is run).
Writes OUTPUT.npy: the first graph output as float32, in the shape the model gives it
(e.g. [N, 10] logits or probabilities).
Exit codes: 0 success, 1 runtime or check error, 2 usage error.
"""

import os
import sys

import numpy as np
import onnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ort_common import run  # noqa: E402


def main(argv):
    usage = "usage: ort_run.py [--check] [--batch N] MODEL INPUT.npy OUTPUT.npy"
    check = "--check" in argv
    args = [arg for arg in argv if arg != "--check"]
    batch = None
    if "--batch" in args:
        at = args.index("--batch")
        if at + 1 >= len(args) or not args[at + 1].isdigit() or int(args[at + 1]) < 1:
            print(usage, file=sys.stderr)
            return 2
        batch = int(args[at + 1])
        del args[at : at + 2]
    if len(args) != 3 or any(arg.startswith("--") for arg in args):
        print(usage, file=sys.stderr)
        return 2
    model_path, input_path, output_path = args
    try:
        model = onnx.load(model_path)
        if check:
            try:
                onnx.checker.check_model(model, full_check=True)
            except Exception as error:
                print(f"ort_run: {model_path}: check failed: {error}", file=sys.stderr)
                return 1
        outputs = [model.graph.output[0].name]
        if batch is None:
            (value,) = run(model, np.load(input_path), outputs)
        else:
            (value,) = run(model, np.load(input_path), outputs, batch=batch, exact=True)
        np.save(output_path, np.ascontiguousarray(value, dtype=np.float32))
    except Exception as error:
        print(f"ort_run: {model_path}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

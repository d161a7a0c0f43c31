"""Print the shapes of every output of a model run in onnxruntime on a batch of zeros.

Needs the pyenv `python3` with onnx, onnxruntime and numpy. The Rust integration
tests call it to measure the tensor shapes nnmend's gradient transform needs when
tract cannot run a model.

Run from the project root:
    python3 tools/reference/ort_shapes.py MODEL.onnx BATCH

The model's single input gets a batch of BATCH zero samples (float32). Prints one
JSON object, output name -> shape. Exit codes: 0 success, 1 runtime error, 2 usage.
"""

import json
import sys

import numpy as np
import onnxruntime as ort


def main(argv):
    if len(argv) != 2:
        print("usage: ort_shapes.py MODEL.onnx BATCH", file=sys.stderr)
        return 2
    path, batch = argv[0], int(argv[1])
    try:
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        (inp,) = session.get_inputs()
        shape = [batch] + [int(d) for d in inp.shape[1:]]
        names = [o.name for o in session.get_outputs()]
        values = session.run(names, {inp.name: np.zeros(shape, dtype=np.float32)})
        print(json.dumps({n: list(v.shape) for n, v in zip(names, values)}))
    except Exception as error:
        print(f"ort_shapes: {path}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Run an nnmend gradient graph in onnxruntime (CPU) and save its three outputs.

Needs the pyenv `python3` with onnx, onnxruntime and numpy. The Rust integration
tests call it to check that the graphs nnmend writes run unchanged in ONNX Runtime.

Run from the project root:
    python3 tools/reference/ort_grad.py [--fd] GRAD.onnx PIXELS.npy TARGET.npy OUT_PREFIX

GRAD.onnx is written by `nnmend grad`: inputs `pixels` and `target`, outputs
`logits`, `loss` and `grad`. `onnx.checker.check_model(full_check=True)` runs first.
Writes OUT_PREFIX_logits.npy, OUT_PREFIX_loss.npy and OUT_PREFIX_grad.npy (float32).
With --fd it also prints, as one JSON line, the largest difference between `grad` and
central differences (step 1e-2) of the graph's own `loss` over every input coordinate,
and the largest |grad| entry: a check in onnxruntime alone, for graphs that another
engine cannot run.
Exit codes: 0 success, 1 check or runtime error, 2 usage error.
"""

import json
import sys

import numpy as np
import onnx
import onnxruntime as ort


def finite_differences(session, feed, grad, step=1e-2):
    """Largest |central difference − grad| over all coordinates, and the largest |grad|."""
    pixels, target = feed["pixels"], feed["target"]
    worst = 0.0
    for b in range(pixels.shape[0]):
        flat = pixels[b].reshape(-1)
        rows = np.repeat(flat[None, :], 2 * flat.size, axis=0)
        for i in range(flat.size):
            rows[2 * i, i] += step
            rows[2 * i + 1, i] -= step
        batch = rows.reshape((2 * flat.size,) + pixels.shape[1:])
        targets = np.repeat(target[b : b + 1], 2 * flat.size, axis=0)
        losses = session.run(["loss"], {"pixels": batch, "target": targets})[0].astype(np.float64)
        taken = (rows[0::2, :] - rows[1::2, :]).diagonal().astype(np.float64)
        central = (losses[0::2] - losses[1::2]) / taken
        worst = max(worst, float(np.abs(central - grad[b].reshape(-1)).max()))
    return {"max_error": worst, "scale": float(np.abs(grad).max())}


def main(argv):
    fd = "--fd" in argv
    argv = [a for a in argv if a != "--fd"]
    if len(argv) != 4:
        print("usage: ort_grad.py [--fd] GRAD.onnx PIXELS.npy TARGET.npy OUT_PREFIX", file=sys.stderr)
        return 2
    model_path, pixels_path, target_path, prefix = argv
    try:
        model = onnx.load(model_path)
        onnx.checker.check_model(model, full_check=True)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        feed = {"pixels": np.load(pixels_path).astype(np.float32), "target": np.load(target_path).astype(np.float32)}
        logits, loss, grad = session.run(["logits", "loss", "grad"], feed)
        for name, value in (("logits", logits), ("loss", loss), ("grad", grad)):
            np.save(f"{prefix}_{name}.npy", np.ascontiguousarray(value, dtype=np.float32))
        if fd:
            print(json.dumps(finite_differences(session, feed, grad)))
    except Exception as error:
        print(f"ort_grad: {model_path}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

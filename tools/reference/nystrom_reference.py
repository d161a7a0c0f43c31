"""Recompute a kernel hybrid's Nyström features with numpy, from its initializers.

Needs the pyenv `python3` with onnx and numpy. The Rust integration tests call it to
check what onnxruntime computes at `nnmend_kernel_features` against the formula.

Run from the project root:
    python3 tools/reference/nystrom_reference.py KH.onnx FEATURES.npy OUTPUT.npy

KH.onnx is a kernel hybrid written by `nnmend fit --head kernel`. FEATURES.npy holds
the extractor's features f (float32 [N, D], e.g. onnxruntime's value of the tensor
`features`). The map is read from the initializers `nnmend_kernel_landmarks_t` (L
transposed, [D, m]), `nnmend_kernel_projection` (P, [m, r]) and
`nnmend_kernel_neg_gamma` (-gamma), and checked against the `nnmend.kernel.gamma` and
`nnmend.kernel.landmarks` metadata. The squared norms of the landmarks are recomputed
here, not read. In float64:
    phi = exp(-gamma * max(0, |f|^2 - 2 f.L^T + |l|^2)) . P
Writes OUTPUT.npy: phi as float32 [N, r].
Exit codes: 0 success, 1 a missing or inconsistent entry, 2 usage error.
"""

import sys

import numpy as np
import onnx
from onnx import numpy_helper


def main(argv):
    if len(argv) != 3:
        print("usage: nystrom_reference.py KH.onnx FEATURES.npy OUTPUT.npy", file=sys.stderr)
        return 2
    model_path, features_path, output_path = argv
    model = onnx.load(model_path)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    meta = {p.key: p.value for p in model.metadata_props}
    try:
        lt = inits["nnmend_kernel_landmarks_t"].astype(np.float64)
        projection = inits["nnmend_kernel_projection"].astype(np.float64)
        gamma = -float(inits["nnmend_kernel_neg_gamma"].reshape(-1)[0])
    except KeyError as missing:
        print(f"{model_path}: no initializer {missing}: not a kernel hybrid", file=sys.stderr)
        return 1
    if meta.get("nnmend.head") != "kernel-svm-nystrom":
        print(f"{model_path}: nnmend.head is {meta.get('nnmend.head')!r}", file=sys.stderr)
        return 1
    if np.float32(meta["nnmend.kernel.gamma"]) != np.float32(gamma):
        print(f"{model_path}: gamma {gamma} but metadata {meta['nnmend.kernel.gamma']}", file=sys.stderr)
        return 1
    if int(meta["nnmend.kernel.landmarks"]) != lt.shape[1] or projection.shape[0] != lt.shape[1]:
        print(f"{model_path}: landmark counts disagree", file=sys.stderr)
        return 1
    f = np.load(features_path).astype(np.float64)
    landmarks = lt.T
    d2 = (f * f).sum(axis=1)[:, None] - 2.0 * f @ landmarks.T + (landmarks * landmarks).sum(axis=1)[None, :]
    phi = np.exp(-gamma * np.maximum(d2, 0.0)) @ projection
    np.save(output_path, phi.astype(np.float32))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

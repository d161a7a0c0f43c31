"""Time nnmend's primal SVM solver against scikit-learn's LinearSVC(dual=False).

Both fit the same one-vs-rest squared-hinge linear SVM on the same features, at the
same C and tol, with the same stopping rule (LIBLINEAR's ||grad f|| <= tol *
max(min(#pos, #neg), 1) / n * ||grad f(0)||) and the same bias treatment (a constant
feature 1 appended, so the bias is regularised like the weights: LinearSVC's
intercept_scaling=1). Contenders, each in a child process of its own:

    nnmend primal, 1 thread    examples/fit_features ... primal 1
    nnmend primal, 2 threads   examples/fit_features ... primal 2 (classes side by side)
    sklearn LinearSVC(dual=False), 1 thread (LIBLINEAR is single-threaded; the BLAS
                               thread variables are set to 1 all the same)

For each it prints the fit's seconds (as each side measures it), the ratio to
scikit-learn's, the objective (sum over classes of 1/2 (|w|^2 + b^2) + C sum of squared
hinge losses, recomputed in float64 for scikit-learn; reported by nnmend), its relative
difference to scikit-learn's, and the test accuracy. Timings mean something only on an
otherwise idle machine.

Features: `--train`/`--test` .npz files holding `features` [N, D] float32 and `labels`
(what `nnmend features` writes), or, without them, a synthetic CNN-like matrix
(`--n`, `--d`, 10 classes: Gaussian latent factors around class centres mixed into D
features, shifted, passed through a ReLU; non-negative and uncentred, about half
non-zero; the test set is a fifth of the training size), seeded.

Needs: numpy, scikit-learn; the example built:
    cargo build --release --example fit_features
Run from the project root:
    python3 tools/bench/svm_vs_sklearn.py [--train TRAIN.npz --test TEST.npz | --n 5000 --d 1024]
        [--c 1.0] [--tol 1e-4] [--fit target/release/examples/fit_features] [--out DIR]
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

SKLEARN_CHILD = r"""
import json, sys, time, warnings, numpy as np, sklearn
from sklearn.exceptions import ConvergenceWarning
from sklearn.svm import LinearSVC
train, test, c, tol = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
tr, te = np.load(train), np.load(test)
xtr, ytr, xte, yte = tr["features"], tr["labels"], te["features"], te["labels"]
clf = LinearSVC(C=c, loss="squared_hinge", dual=False, tol=tol, max_iter=1000)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    t0 = time.perf_counter()
    clf.fit(xtr, ytr)
    sec = time.perf_counter() - t0
x = xtr.astype(np.float64)
obj = 0.0
for k in range(clf.coef_.shape[0]):
    y = np.where(ytr == k, 1.0, -1.0)
    w, b = clf.coef_[k].astype(np.float64), float(clf.intercept_[k])
    m = np.maximum(0.0, 1.0 - y * (x @ w + b))
    obj += 0.5 * (w @ w + b * b) + c * (m ** 2).sum()
print(json.dumps({"seconds": sec, "objective": obj, "n_iter": int(np.max(clf.n_iter_)),
                  "converged": not any(issubclass(w.category, ConvergenceWarning) for w in caught),
                  "test_accuracy": float((clf.predict(xte) == yte).mean()), "version": sklearn.__version__}))
"""


def synthetic(n, d, seed, out):
    """Writes a CNN-like train/test pair of .npz files under `out`; returns their paths."""
    rng = np.random.default_rng(seed)
    k, latent = 10, 16
    centres = rng.normal(size=(k, latent))
    mix = rng.normal(size=(latent, d)) / np.sqrt(latent)

    def draw(m):
        y = rng.integers(0, k, size=m)
        z = centres[y] + rng.normal(size=(m, latent)) * 1.3
        x = np.maximum(z @ mix + 0.3 * rng.normal(size=(m, d)) + 0.2, 0.0) * 3.0
        return x.astype(np.float32), y.astype(np.int64)

    paths = []
    for name, m in (("train", n), ("test", max(n // 5, 1))):
        x, y = draw(m)
        path = os.path.join(out, f"synthetic_{n}x{d}_{name}.npz")
        np.savez(path, features=x, labels=y)
        paths.append(path)
    return paths


def child(cmd, env):
    """Runs cmd; returns its stdout parsed as one JSON document and its wall seconds."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr.decode()}")
    return json.loads(proc.stdout.decode()), wall


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", help="training features (.npz with features, labels)")
    ap.add_argument("--test", help="test features (.npz with features, labels)")
    ap.add_argument("--n", type=int, default=5000, help="synthetic training rows")
    ap.add_argument("--d", type=int, default=1024, help="synthetic features")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--c", default="1.0")
    ap.add_argument("--tol", default="1e-4")
    ap.add_argument("--fit", default="target/release/examples/fit_features")
    ap.add_argument("--out", default="/tmp/nnmend-svm-bench")
    args = ap.parse_args()
    if (args.train is None) != (args.test is None):
        ap.error("give both --train and --test, or neither (synthetic features)")
    if not os.path.exists(args.fit):
        ap.error(f"{args.fit} does not exist: cargo build --release --example fit_features")
    os.makedirs(args.out, exist_ok=True)
    train, test = (args.train, args.test) if args.train else synthetic(args.n, args.d, args.seed, args.out)
    shape = np.load(train)["features"].shape

    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    rows = {}
    for threads in (1, 2):
        r, wall = child([args.fit, train, test, args.c, args.tol, "1000", "primal", str(threads)], env)
        rows[f"nnmend primal, {threads} thread{'s' if threads > 1 else ''}"] = dict(r, wall=wall)
    r, wall = child([sys.executable, "-c", SKLEARN_CHILD, train, test, args.c, args.tol], env)
    rows["sklearn LinearSVC(dual=False)"] = dict(r, wall=wall)

    sk = rows["sklearn LinearSVC(dual=False)"]
    print(f"features {shape[0]} x {shape[1]}, C = {args.c}, tol = {args.tol}")
    print(f"{'contender':32} {'seconds':>9} {'/sklearn':>9} {'objective':>16} {'rel. to sk':>11} "
          f"{'test acc':>9} {'converged':>9}")
    for name, v in rows.items():
        rel = (v["objective"] - sk["objective"]) / abs(sk["objective"])
        print(f"{name:32} {v['seconds']:9.3f} {v['seconds'] / sk['seconds']:9.3f} {v['objective']:16.6f} "
              f"{rel:11.2e} {v['test_accuracy']:9.4f} {str(v['converged']):>9}")
    with open(os.path.join(args.out, "svm_vs_sklearn.json"), "w") as f:
        json.dump({"train": train, "test": test, "shape": list(shape), "c": args.c, "tol": args.tol,
                   "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()

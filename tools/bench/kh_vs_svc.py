"""Compare nnmend's kernel hybrid (Nyström RBF map + linear SVM) with scikit-learn's
exact RBF SVC on the same CNN features, and with scikit-learn's Nystroem + LinearSVC.

Needs the pyenv `python3` with numpy and scikit-learn, and a built `nnmend` binary.

Run from the project root, e.g. on MNIST with the paper's MNIST-NN:
    python3 tools/bench/kh_vs_svc.py --model fixtures/mnist_paper.onnx \
        --data ../shared/datasets/mnist --subset 10000 --json-out kh_vs_svc.json

What it does, in one run:
1. `nnmend features` writes the extractor's features of the first --subset training
   images and of the test images (--test-limit of them); both sides use these.
2. scikit-learn `SVC(kernel="rbf", gamma="scale", C)` on the subset: the paper's KH,
   exact (O(n^2), hence the subset).
3. scikit-learn `Nystroem(gamma=1/(D*Var), n_components=--landmarks)` +
   `LinearSVC(C)`: the same approximation as nnmend's, as a second reference.
4. `nnmend fit --head kernel --limit SUBSET --landmarks M` and `nnmend eval` on the test
   images; with --full, also on the whole training set; and `nnmend fit --head
   linear` (the LH) on the subset for context.
Prints a table of test accuracies and fit times; --json-out writes them as JSON.
Options: --nnmend (the binary, default target/release/nnmend, else target/debug/nnmend),
--mean/--std (passed to nnmend as given), --c (default 1), --seed.
Exit codes: 0 success, 1 a step failed, 2 usage error.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from sklearn.kernel_approximation import Nystroem
from sklearn.svm import SVC, LinearSVC


def default_binary():
    for build in ("release", "debug"):
        path = os.path.join("target", build, "nnmend")
        if os.path.exists(path):
            return path
    return "nnmend"


def nnmend(binary, args):
    """Runs nnmend with --json and returns its JSON document."""
    proc = subprocess.run([binary, *args, "--json"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"nnmend {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="an IDX folder (train and test splits) or a CIFAR binary folder")
    ap.add_argument("--subset", type=int, default=10000, help="training images for the exact SVC (the first N)")
    ap.add_argument("--test-limit", type=int, default=None, help="test images (default: all)")
    ap.add_argument("--landmarks", type=int, default=1000)
    ap.add_argument("--c", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--full", action="store_true", help="also fit nnmend's KH on the whole training set")
    ap.add_argument("--mean", default=None)
    ap.add_argument("--std", default=None)
    ap.add_argument("--nnmend", default=default_binary())
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args(argv)
    if args.subset < 2 or args.landmarks < 1 or args.c <= 0:
        ap.error("--subset must be >= 2, --landmarks >= 1 and --c > 0")

    norm = []
    if args.mean is not None:
        norm += ["--mean", args.mean]
    if args.std is not None:
        norm += ["--std", args.std]
    test_limit = ["--limit", str(args.test_limit)] if args.test_limit else []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        train_npz = os.path.join(tmp, "train.npz")
        test_npz = os.path.join(tmp, "test.npz")
        nnmend(args.nnmend, ["features", args.model, "--data", args.data, "--split", "train",
                             "--limit", str(args.subset), "-o", train_npz, *norm])
        nnmend(args.nnmend, ["features", args.model, "--data", args.data, "--split", "test",
                             *test_limit, "-o", test_npz, *norm])
        train, test = np.load(train_npz), np.load(test_npz)
        x, y = train["features"], train["labels"]
        xt, yt = test["features"], test["labels"]
        n, d = x.shape
        print(f"features: {n} training and {xt.shape[0]} test images, D = {d}", file=sys.stderr)

        started = time.perf_counter()
        svc = SVC(kernel="rbf", gamma="scale", C=args.c).fit(x, y)
        svc_seconds = time.perf_counter() - started
        rows.append({"model": "sklearn SVC rbf (exact)", "train": n, "landmarks": None,
                     "accuracy": float((svc.predict(xt) == yt).mean()), "fit_seconds": svc_seconds,
                     "support_vectors": int(svc.n_support_.sum())})

        gamma = float(1.0 / (d * float(x.var()))) if x.var() > 0 else 1.0
        started = time.perf_counter()
        ny = Nystroem(kernel="rbf", gamma=gamma, n_components=min(args.landmarks, n), random_state=args.seed)
        phi = ny.fit_transform(x)
        lin = LinearSVC(C=args.c, dual=True, max_iter=10000).fit(phi, y)
        ny_seconds = time.perf_counter() - started
        rows.append({"model": "sklearn Nystroem + LinearSVC", "train": n, "landmarks": min(args.landmarks, n),
                     "accuracy": float((lin.predict(ny.transform(xt)) == yt).mean()), "fit_seconds": ny_seconds})

        fits = [("nnmend KH (fit --head kernel)", "kernel", ["--limit", str(args.subset)])]
        if args.full:
            fits.append(("nnmend KH, whole training set", "kernel", []))
        fits.append(("nnmend LH (fit --head linear)", "linear", ["--limit", str(args.subset)]))
        for label, head, limit in fits:
            out = os.path.join(tmp, f"{head}_{len(rows)}.onnx")
            extra = ["--landmarks", str(args.landmarks)] if head == "kernel" else []
            started = time.perf_counter()
            fit = nnmend(args.nnmend, ["fit", args.model, "--train", args.data, "--split", "train", *limit,
                                       "--head", head, *extra, "--c", str(args.c), "--seed", str(args.seed),
                                       "-o", out, *norm])
            seconds = time.perf_counter() - started
            ev = nnmend(args.nnmend, ["eval", out, "--data", args.data, "--split", "test", *test_limit, *norm])
            kernel = fit.get("kernel") or {}
            rows.append({"model": label, "train": fit["n_train"], "landmarks": kernel.get("landmarks"),
                         "gamma": kernel.get("gamma"), "accuracy": ev["models"][0]["accuracy"],
                         "fit_seconds": seconds, "svm_converged": fit["svm"]["converged"]})
    rows[1]["gamma"] = gamma
    rows[0]["gamma"] = gamma

    print(f"{'model':<34} {'train':>6} {'landmarks':>9} {'gamma':>10} {'test acc':>9} {'fit s':>8}")
    for r in rows:
        lm = "-" if r["landmarks"] is None else str(r["landmarks"])
        g = "-" if r.get("gamma") is None else f"{r['gamma']:.3g}"
        print(f"{r['model']:<34} {r['train']:>6} {lm:>9} {g:>10} {r['accuracy']:>9.4f} {r['fit_seconds']:>8.1f}")
    if args.json_out:
        doc = {"model": args.model, "data": args.data, "subset": args.subset, "c": args.c,
               "test_images": int(xt.shape[0]), "feature_dim": int(d), "rows": rows}
        with open(args.json_out, "w") as f:
            json.dump(doc, f, indent=2)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)

"""Benchmark nnmend's hybrid pipeline against its peers, measured in the same run.

- Feature extraction over MNIST's 70,000 images (60k train + 10k test): `nnmend
  features` (tract; one thread, and one per core) against onnxruntime-python running the very same
  extractor graph (written by `nnmend cut`), with 1 intra-op thread and with ORT's
  default thread count. Batch 64 everywhere.
- SVM fit on the 60k training features: nnmend's dual coordinate descent
  (`examples/fit_features.rs`) against scikit-learn `LinearSVC(dual=False)` and
  `LinearSVC(dual=True)`, same C, same tol.

Each contender runs in a child process of its own, so its peak memory (max RSS, from
wait4) is its own. Times are the phase alone (model loading excluded) as each side
measures it; wall times of the whole process are listed too.

Needs: pyenv `python3` with numpy, onnxruntime, scikit-learn; a release build:
    cargo build --release --examples
Run from the project root:
    python3 tools/bench/bench_hybrid.py [--model fixtures/mnist_paper.onnx] [--c 1.0]
Writes BENCH_DIR (default /tmp/nnmend-bench) with the features and `bench.json`.
"""

import argparse
import json
import os
import subprocess
import sys
import time

ORT_CHILD = r"""
import json, sys, time, gzip, numpy as np, onnxruntime as ort
model, data, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
def images(name):
    with gzip.open(f"{data}/{name}", "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[4:8], "big")
    return np.frombuffer(raw, np.uint8, offset=16).reshape(n, 1, 28, 28)
x = np.concatenate([images("train-images-idx3-ubyte.gz"), images("t10k-images-idx3-ubyte.gz")])
so = ort.SessionOptions()
if threads > 0:
    so.intra_op_num_threads = threads
sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
name = sess.get_inputs()[0].name
t0 = time.perf_counter()
out = []
for i in range(0, len(x), 64):
    out.append(sess.run(None, {name: x[i:i + 64].astype(np.float32) / 255.0})[0])
f = np.concatenate(out)
print(json.dumps({"seconds": time.perf_counter() - t0, "n": int(f.shape[0]), "d": int(f.shape[1]),
                  "version": ort.__version__}))
"""

SKLEARN_CHILD = r"""
import json, sys, time, numpy as np, sklearn
from sklearn.svm import LinearSVC
train, test, c, tol, dual = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), sys.argv[5] == "dual"
tr, te = np.load(train), np.load(test)
xtr, ytr, xte, yte = tr["features"], tr["labels"], te["features"], te["labels"]
clf = LinearSVC(C=c, loss="squared_hinge", dual=dual, tol=tol, max_iter=1000)
t0 = time.perf_counter()
clf.fit(xtr, ytr)
sec = time.perf_counter() - t0
obj = 0.0
for k in range(clf.coef_.shape[0]):
    y = np.where(ytr == k, 1.0, -1.0)
    w, b = clf.coef_[k].astype(np.float64), float(clf.intercept_[k])
    m = np.maximum(0.0, 1.0 - y * (xtr.astype(np.float64) @ w + b))
    obj += 0.5 * (w @ w + b * b) + c * (m ** 2).sum()
print(json.dumps({"seconds": sec, "objective": obj, "n_iter": int(np.max(clf.n_iter_)),
                  "train_accuracy": float((clf.predict(xtr) == ytr).mean()),
                  "test_accuracy": float((clf.predict(xte) == yte).mean()), "version": sklearn.__version__}))
"""


def child(cmd):
    """Runs cmd, returns (its stdout parsed as one JSON document, wall seconds, peak RSS in MiB)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{err.decode()}")
    return json.loads(out.decode()), wall, usage.ru_maxrss / 1024.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="fixtures/mnist_paper.onnx")
    ap.add_argument("--data", default="../shared/datasets/mnist")
    ap.add_argument("--nnmend", default="target/release/nnmend")
    ap.add_argument("--fit", default="target/release/examples/fit_features")
    ap.add_argument("--out", default="/tmp/nnmend-bench")
    ap.add_argument("--c", default="1.0")
    ap.add_argument("--tol", default="1e-4")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    extractor = os.path.join(args.out, "extractor.onnx")
    subprocess.run([args.nnmend, "cut", args.model, "-o", extractor], check=True, stdout=subprocess.DEVNULL)
    rows = {}

    feats = {}
    for threads in ("1", "default"):
        sec = wall_sum = peak = 0.0
        for split in ("train", "test"):
            feats[split] = os.path.join(args.out, f"features_{split}.npz")
            cmd = [args.nnmend, "features", args.model, "--data", args.data, "--split", split,
                   "-o", feats[split], "--json"]
            if threads != "default":
                cmd += ["--threads", threads]
            r, wall, rss = child(cmd)
            sec += r["seconds"]
            wall_sum += wall
            peak = max(peak, rss)
        key = f"extract/nnmend-tract-{'1thread' if threads == '1' else 'default-threads'}"
        rows[key] = {"seconds": sec, "wall": wall_sum, "rss_mib": peak}
    for threads in (1, 0):
        r, wall, rss = child([sys.executable, "-c", ORT_CHILD, extractor, args.data, str(threads)])
        key = f"extract/onnxruntime-{'1thread' if threads else 'default-threads'}"
        rows[key] = {"seconds": r["seconds"], "wall": wall, "rss_mib": rss, "version": r["version"]}

    r, wall, rss = child([args.fit, feats["train"], feats["test"], args.c, args.tol, "1000", "dual"])
    rows["svm/nnmend-dcd"] = dict(r, wall=wall, rss_mib=rss)
    for mode in ("primal", "dual"):
        r, wall, rss = child([sys.executable, "-c", SKLEARN_CHILD, feats["train"], feats["test"], args.c, args.tol,
                              mode])
        rows[f"svm/sklearn-LinearSVC(dual={mode == 'dual'})"] = dict(r, wall=wall, rss_mib=rss)

    base_x = rows["extract/nnmend-tract-default-threads"]
    base_s = rows["svm/nnmend-dcd"]
    print(f"{'phase/contender':44} {'seconds':>9} {'wall':>8} {'peak MiB':>9} {'nnmend/peer time':>17}")
    for k, v in rows.items():
        base = base_x if k.startswith("extract") else base_s
        ratio = base["seconds"] / v["seconds"]
        extra = ""
        if "objective" in v:
            extra = f"  obj {v['objective']:.4f} test acc {v['test_accuracy']:.4f}"
        print(f"{k:44} {v['seconds']:9.2f} {v['wall']:8.2f} {v['rss_mib']:9.0f} {ratio:17.2f}{extra}")
    with open(os.path.join(args.out, "bench.json"), "w") as f:
        json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()

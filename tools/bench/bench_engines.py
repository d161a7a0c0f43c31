"""Benchmark feature extraction by engine: nnmend on tract, nnmend on ONNX Runtime,
and onnxruntime-python, on the same extractor graph, data, batch and threads, in one run.

Cases:
- mnist: the paper's MNIST-NN (`fixtures/mnist_paper.onnx`) over all 70,000 MNIST
  images (60k train + 10k test, from ../shared/datasets/mnist), no normalisation.
- cifar: the CIFAR ResNet (`../shared/models/pytorch18_cifar_resnet2b.onnx`) over the
  10,000 CIFAR-10 test images (the JPEG folders of ../shared/datasets/cifar10-jpeg.tar.gz,
  decoded once with Pillow into an .npz that both sides read), per-channel mean/std.

The extractor is the graph `nnmend cut` writes; onnxruntime-python runs that file.
Contenders at T threads:
- `nnmend tract`: `nnmend features --backend tract --threads T` (T workers);
- `nnmend ort`: `nnmend features --backend ort --threads T --intra-threads 1` (T workers,
  one ONNX Runtime session each);
- `nnmend ort (intra)`: `--threads 1 --intra-threads T` (one session, T intra-op threads);
- `onnxruntime-python`: one session, T intra-op threads, inter-op 1.
Times are the extraction alone, as each side measures it (nnmend: the `seconds` of its
`--json` report; Python: around its batch loop, after the data are in memory).

Needs: a release build with ONNX Runtime (`cargo build --release --features ort`), the
pyenv `python3` with numpy, onnxruntime and pillow (`pip install pillow`).
Run from the project root:
    python3 tools/bench/bench_engines.py [--threads 1 2] [--batch 64] [--cases mnist cifar]
Prints a Markdown table per case; `--json FILE` saves the raw numbers.
"""

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time

import numpy as np

WORK = "/tmp/nnmend-bench-engines"
CIFAR_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR_STD = [0.2470, 0.2435, 0.2616]
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

ORT_CHILD = r"""
import json, sys, time, numpy as np, onnxruntime as ort
model, threads, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
mean, std = json.loads(sys.argv[4]), json.loads(sys.argv[5])
sets = [np.load(p)["x"] for p in sys.argv[6:]]
so = ort.SessionOptions()
so.intra_op_num_threads = threads
so.inter_op_num_threads = 1
sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
name = sess.get_inputs()[0].name
m = np.asarray(mean, np.float32).reshape(1, -1, 1, 1) if mean else None
s = np.asarray(std, np.float32).reshape(1, -1, 1, 1) if std else None
total, n = 0.0, 0
for x in sets:
    t0 = time.perf_counter()
    for i in range(0, len(x), batch):
        b = x[i:i + batch]
        if m is not None:
            b = (b - m) / s
        sess.run(None, {name: b})
        n += len(b)
    total += time.perf_counter() - t0
print(json.dumps({"seconds": total, "n": n, "version": ort.__version__}))
"""


def sh(cmd):
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"`{' '.join(cmd)}` failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def mnist_sets():
    """The 60k train and 10k test MNIST images as float32 .npz files in [0, 1]."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "common"))
    from mnist_idx import load_split  # noqa: E402

    paths = []
    for split in ("train", "test"):
        path = f"{WORK}/mnist-{split}.npz"
        if not os.path.exists(path):
            images, labels = load_split(split, "../shared/datasets/mnist")
            x = (images.reshape(-1, 1, 28, 28).astype(np.float32) / 255.0).astype(np.float32)
            np.savez(path, x=x, y=labels.astype(np.int64))
        paths.append(path)
    return paths


def cifar_set():
    """The 10k CIFAR-10 test images (JPEG) as a float32 .npz in [0, 1], NCHW."""
    path = f"{WORK}/cifar-test.npz"
    if os.path.exists(path):
        return [path]
    from PIL import Image

    xs, ys = [], []
    with tarfile.open("../shared/datasets/cifar10-jpeg.tar.gz") as tar:
        members = sorted(
            (m for m in tar.getmembers() if m.isfile() and "/test/" in m.name and m.name.endswith(".jpg")),
            key=lambda m: m.name,
        )
        for m in members:
            cls = m.name.split("/")[-2]
            with Image.open(tar.extractfile(m)) as img:
                xs.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
            ys.append(CIFAR_CLASSES.index(cls))
    x = np.stack(xs).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    np.savez(path, x=x.astype(np.float32), y=np.asarray(ys, np.int64))
    return [path]


def nnmend_features(args, model, sets, backend, threads, intra, mean, std):
    total, n = 0.0, 0
    for data in sets:
        cmd = [args.nnmend, "features", model, "--data", data, "-o", f"{WORK}/features.npz", "--json",
               "--backend", backend, "--threads", str(threads), "--intra-threads", str(intra),
               "--batch", str(args.batch)]
        if mean:
            cmd += ["--mean", ",".join(map(str, mean)), "--std", ",".join(map(str, std))]
        report = json.loads(sh(cmd))
        total += report["seconds"]
        n += report["n"]
        os.remove(f"{WORK}/features.npz")
    return {"seconds": total, "n": n, "engine": report.get("engine")}


def ort_python(args, extractor, sets, threads, mean, std):
    out = sh([sys.executable, "-c", ORT_CHILD, extractor, str(threads), str(args.batch), json.dumps(mean),
              json.dumps(std), *sets])
    return json.loads(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--cases", nargs="+", default=["mnist", "cifar"])
    parser.add_argument("--nnmend", default="target/release/nnmend")
    parser.add_argument("--json", help="save the raw numbers here")
    args = parser.parse_args()
    os.makedirs(WORK, exist_ok=True)
    cases = {
        "mnist": ("fixtures/mnist_paper.onnx", mnist_sets, [], []),
        "cifar": ("../shared/models/pytorch18_cifar_resnet2b.onnx", cifar_set, CIFAR_MEAN, CIFAR_STD),
    }
    raw = {}
    for case in args.cases:
        model, make_sets, mean, std = cases[case]
        sets = make_sets()
        extractor = f"{WORK}/{case}-extractor.onnx"
        if os.path.exists(extractor):
            os.remove(extractor)
        sh([args.nnmend, "cut", model, "-o", extractor])
        rows = []
        for t in args.threads:
            contenders = [
                ("nnmend tract", lambda: nnmend_features(args, model, sets, "tract", t, 1, mean, std)),
                ("nnmend ort", lambda: nnmend_features(args, model, sets, "ort", t, 1, mean, std)),
            ]
            if t > 1:
                contenders.append(
                    ("nnmend ort (intra)", lambda: nnmend_features(args, model, sets, "ort", 1, t, mean, std))
                )
            contenders.append(("onnxruntime-python", lambda: ort_python(args, extractor, sets, t, mean, std)))
            for name, run in contenders:
                r = run()
                print(f"{case} T={t} {name}: {r['seconds']:.2f} s", file=sys.stderr)
                rows.append({"threads": t, "contender": name, **r})
        raw[case] = rows
        n = rows[0]["n"]
        print(f"\n### {case}: {n} images, batch {args.batch}\n")
        print("| threads | contender | seconds | images/s | time / onnxruntime-python |")
        print("| ---: | --- | ---: | ---: | ---: |")
        for t in args.threads:
            ref = next(r for r in rows if r["threads"] == t and r["contender"] == "onnxruntime-python")
            for r in (r for r in rows if r["threads"] == t):
                print(f"| {t} | {r['contender']} | {r['seconds']:.2f} | {r['n'] / r['seconds']:.0f} | "
                      f"{r['seconds'] / ref['seconds']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=1)


if __name__ == "__main__":
    main()

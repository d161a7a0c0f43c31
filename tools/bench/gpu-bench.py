"""Throughput of nnmend's ONNX Runtime CUDA backend against onnxruntime-python's CUDA EP.

Run by `tools/bench/gpu-check.sh run` on the GPU machine; `--provider cpu` runs the same
measurements with the CPU execution provider (`--backend ort`), as a dry run anywhere.

Measures, batch 256, on the same graphs nnmend writes:
- feature extraction, MNIST-NN over the 70,000 MNIST images (IDX folder) and the CIFAR
  ResNet over the 10,000 CIFAR-10 test images (JPEG folders): `nnmend features` (its
  JSON `seconds`) against onnxruntime-python running the `nnmend cut` extractor;
- FGSM on the first 2,000 MNIST test images: `nnmend attack --json` (`seconds`) against
  onnxruntime-python running the `nnmend grad` gradient graph, then the forward graph.

Needs numpy and onnxruntime (onnxruntime-gpu for CUDA); Pillow to decode the CIFAR JPEGs
for the Python side (without it, that side runs on random pixels of the same shape).
Usage: python3 tools/bench/gpu-bench.py --nnmend BIN --mnist DIR --cifar DIR --cifar-model M
       [--provider cuda|cpu] [--json OUT]
Prints a Markdown table.
"""

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort

CIFAR_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR_STD = [0.2470, 0.2435, 0.2616]
BATCH = 256


def sh(cmd):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        raise SystemExit(f"`{' '.join(cmd)}` failed:\n{p.stderr[-3000:]}")
    return p.stdout


def idx_images(path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[4:8], "big")
    return np.frombuffer(raw, np.uint8, offset=16).reshape(n, 1, 28, 28).astype(np.float32) / 255.0


def idx_labels(path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    return np.frombuffer(raw, np.uint8, offset=8).astype(np.int64)


def cifar_images(folder):
    try:
        from PIL import Image
    except ImportError:
        print("no Pillow: the Python side runs on random pixels", file=sys.stderr)
        return np.random.default_rng(0).random((10000, 3, 32, 32), dtype=np.float32)
    xs = []
    for cls in sorted(os.listdir(os.path.join(folder, "test"))):
        d = os.path.join(folder, "test", cls)
        for name in sorted(os.listdir(d)):
            with Image.open(os.path.join(d, name)) as img:
                xs.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
    return np.stack(xs).transpose(0, 3, 1, 2).astype(np.float32) / 255.0


def session(path, provider):
    so = ort.SessionOptions()
    if provider == "cpu":
        # Like nnmend's one worker with one intra-op thread.
        so.intra_op_num_threads = 1
    providers = ["CUDAExecutionProvider"] if provider == "cuda" else ["CPUExecutionProvider"]
    s = ort.InferenceSession(path, so, providers=providers)
    if provider == "cuda" and "CUDAExecutionProvider" not in s.get_providers():
        raise SystemExit("onnxruntime-python could not use the CUDA EP")
    return s


def python_extract(path, sets, provider, mean=None, std=None):
    s = session(path, provider)
    name = s.get_inputs()[0].name
    m = np.asarray(mean, np.float32).reshape(1, -1, 1, 1) if mean else None
    sd = np.asarray(std, np.float32).reshape(1, -1, 1, 1) if std else None
    s.run(None, {name: sets[0][:BATCH] if m is None else (sets[0][:BATCH] - m) / sd})
    t0, n = time.perf_counter(), 0
    for x in sets:
        for i in range(0, len(x), BATCH):
            b = x[i:i + BATCH]
            s.run(None, {name: b if m is None else (b - m) / sd})
            n += len(b)
    return {"seconds": time.perf_counter() - t0, "n": n}


def python_fgsm(grad_path, fwd_path, x, y, eps, provider):
    g, f = session(grad_path, provider), session(fwd_path, provider)
    fin = f.get_inputs()[0].name
    t = np.eye(10, dtype=np.float32)[y]
    g.run(None, {"pixels": x[:BATCH], "target": t[:BATCH]})
    t0 = time.perf_counter()
    robust = 0
    for i in range(0, len(x), BATCH):
        logits, _, grad = g.run(None, {"pixels": x[i:i + BATCH], "target": t[i:i + BATCH]})
        adv = np.clip(x[i:i + BATCH] + eps * np.sign(grad), 0, 1).astype(np.float32)
        z = f.run(None, {fin: adv})[0]
        robust += int(((logits.argmax(1) == y[i:i + BATCH]) & (z.argmax(1) == y[i:i + BATCH])).sum())
    return {"seconds": time.perf_counter() - t0, "n": len(x), "robust_accuracy": robust / len(x)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nnmend", required=True)
    p.add_argument("--mnist", required=True)
    p.add_argument("--cifar", required=True)
    p.add_argument("--cifar-model", required=True)
    p.add_argument("--provider", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--json")
    a = p.parse_args()
    backend = "ort-cuda" if a.provider == "cuda" else "ort"
    tmp = tempfile.mkdtemp()
    rows = []

    def nn(args):
        return json.loads(sh([a.nnmend, *args, "--backend", backend, "--batch", str(BATCH), "--threads", "1",
                              "--json"]))

    # MNIST extraction, 70k.
    mnist_model = "fixtures/mnist_paper.onnx"
    sh([a.nnmend, "cut", mnist_model, "-o", f"{tmp}/mnist-x.onnx"])
    secs, n, engine = 0.0, 0, None
    for split in ("train", "test"):
        r = nn(["features", mnist_model, "--data", a.mnist, "--split", split, "-o", f"{tmp}/f-{split}.npz"])
        secs, n, engine = secs + r["seconds"], n + r["n"], r.get("engine")
    rows.append(("MNIST-NN extraction", "nnmend", secs, n))
    sets = [idx_images(f"{a.mnist}/train-images-idx3-ubyte.gz"), idx_images(f"{a.mnist}/t10k-images-idx3-ubyte.gz")]
    r = python_extract(f"{tmp}/mnist-x.onnx", sets, a.provider)
    rows.append(("MNIST-NN extraction", "onnxruntime-python", r["seconds"], r["n"]))

    # CIFAR extraction, 10k.
    sh([a.nnmend, "cut", a.cifar_model, "-o", f"{tmp}/cifar-x.onnx"])
    norm = ["--mean", ",".join(map(str, CIFAR_MEAN)), "--std", ",".join(map(str, CIFAR_STD))]
    r = nn(["features", a.cifar_model, "--data", a.cifar, "--split", "test", "-o", f"{tmp}/fc.npz", *norm])
    rows.append(("CIFAR ResNet extraction", "nnmend", r["seconds"], r["n"]))
    r = python_extract(f"{tmp}/cifar-x.onnx", [cifar_images(a.cifar)], a.provider, CIFAR_MEAN, CIFAR_STD)
    rows.append(("CIFAR ResNet extraction", "onnxruntime-python", r["seconds"], r["n"]))

    # FGSM, first 2,000 MNIST test images.
    r = nn(["attack", mnist_model, "--data", a.mnist, "--split", "test", "--limit", "2000", "--eps", "0.1"])
    rows.append(("MNIST-NN FGSM", "nnmend", r["seconds"], r["results"][0]["n"]))
    fgsm_nn = r["results"][0]["robust_accuracy"]
    sh([a.nnmend, "grad", mnist_model, "-o", f"{tmp}/grad.onnx"])
    x = sets[1][:2000]
    y = idx_labels(f"{a.mnist}/t10k-labels-idx1-ubyte.gz")[:2000]
    r = python_fgsm(f"{tmp}/grad.onnx", mnist_model, x, y, 0.1, a.provider)
    rows.append(("MNIST-NN FGSM", "onnxruntime-python", r["seconds"], r["n"]))

    print(f"provider {a.provider}; nnmend engine {json.dumps(engine)}; onnxruntime-python {ort.__version__}")
    print(f"FGSM robust accuracy: nnmend {fgsm_nn:.4f}, onnxruntime-python {r['robust_accuracy']:.4f}\n")
    print("| task | contender | seconds | images/s | nnmend / python (time) |")
    print("| --- | --- | ---: | ---: | ---: |")
    for i in range(0, len(rows), 2):
        (task, _, s1, n1), (_, _, s2, n2) = rows[i], rows[i + 1]
        print(f"| {task} | nnmend | {s1:.2f} | {n1 / s1:.0f} | {s1 / s2:.2f} |")
        print(f"| {task} | onnxruntime-python | {s2:.2f} | {n2 / s2:.0f} | |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"provider": a.provider, "engine": engine, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

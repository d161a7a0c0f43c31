"""Benchmark FGSM and PGD-40 on MNIST-NN: nnmend against PyTorch and onnxruntime, in one run.

Every peer attacks the first N (default 2,000) MNIST test images, batch 256, one
thread by default (--threads), untargeted on the true label with the per-sample
cross-entropy loss, eps 0.1:
    FGSM    x' = clamp(x + eps * sign(grad), 0, 1); one forward+backward per image,
            plus one forward at x' to evaluate it.
    PGD-40  x_0 = x (no random start); x_{t+1} = clamp(x_t + a * sign(grad(x_t)), x - eps,
            x + eps) clamped to [0, 1], a = 2.5 * eps / 40; 40 forward+backward per
            image, plus one forward at x_40. Clean predictions come from the first step.
robust accuracy = mean(clean correct and adversarial correct), so the three peers can
be checked against each other.

Peers:
    pytorch      CPU autograd, run by the Debian `/usr/bin/python3` in a child process
                 (this script with --torch-worker; it prints one JSON line). Debian's
                 PyTorch links the generic reference BLAS, which makes nn.Linear about
                 twice as slow as oneDNN; by default the two FC layers therefore run as
                 4x4 and 1x1 convolutions (MnistNN.forward_train, the same function),
                 which is what a PyTorch with a tuned BLAS would roughly give.
                 --torch-fc linear measures plain nn.Linear instead.
    onnxruntime  onnxruntime-python running nnmend's gradient graph (--grad-graph,
                 written by `nnmend grad fixtures/mnist_paper.onnx -o FILE`): inputs
                 `pixels` float32 [N,1,28,28] in [0,1] and `target` float32 [N,10]
                 (one-hot), outputs `logits` [N,10], `loss` [N], `grad` [N,1,28,28].
                 sign/clip/projection in numpy; the evaluation at x' is one more run of
                 the gradient graph (its `logits`). Session: intra-op threads
                 --threads, inter-op 1. Also measured: one gradient-graph run as a
                 multiple of one forward run of the model itself, same batches.
    nnmend       the binary (--nnmend) on its --backend (tract, or ort: one worker per
                 thread, one intra-op thread each), `nnmend attack MODEL --data DIR --split test
                 --limit N --eps 0.1 --method fgsm|pgd [--steps 40] --threads T --json`;
                 the time is the JSON's top-level `seconds` (the clean pass plus the
                 attack, without loading), else the wall clock of the whole process
                 (listed too). PGD runs with --keep-going, all steps on every image
                 like the other peers; nnmend's default early stop (an image stops at
                 its first misclassified iterate) is listed on its own row.
A peer whose prerequisites are missing (no --grad-graph, no binary, no /usr/bin/python3
with torch) is skipped with a message. Times exclude loading the model and the data
and one warm-up batch (pytorch, onnxruntime).

Needs: pyenv `python3` with numpy and onnxruntime; `/usr/bin/python3` with PyTorch 1.13
and onnx (for the pytorch peer, which reads its weights from the ONNX file via
tools/reference/torch_reference.py); for the other two, a release build and its gradient graph:
    cargo build --release
    target/release/nnmend grad fixtures/mnist_paper.onnx -o /tmp/mnist_grad.onnx
Run from the project root:
    python3 tools/bench/bench_attack.py --grad-graph /tmp/mnist_grad.onnx [--threads 1] [--n 2000]
    python3 tools/bench/bench_attack.py --quick        # N = 512, a smoke run
Prints a Markdown table (images/s, accuracies, nnmend/peer speed ratios) and writes
nothing unless --json FILE is given (then the raw numbers as JSON). At N = 2,000 the
pytorch peer alone takes about 70 s on one core (2 minutes with --torch-fc linear).
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

TOOLS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(TOOLS, folder) for folder in ("common", "reference", "train")]
from mnist_idx import load_split, to_nchw_float  # noqa: E402

TORCH_PYTHON = "/usr/bin/python3"
QUICK_N = 512


def batches(n, size):
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def step_size(args):
    return 2.5 * args.eps / args.steps


def load_data(args):
    images, labels = load_split("test", args.data, limit=args.n)
    if len(images) < args.n:
        raise SystemExit(f"{args.data}: only {len(images)} test images, --n {args.n} asked")
    return to_nchw_float(images), labels.astype(np.int64)


def summary(seconds, n, clean, adv):
    """JSON fields of one attack: time, rate and accuracies from boolean arrays."""
    return {
        "seconds": seconds,
        "images_per_second": n / seconds,
        "clean_accuracy": float(clean.mean()),
        "robust_accuracy": float((clean & adv).mean()),
    }


# ---------------------------------------------------------------- pytorch (child process)


def torch_worker(args):
    """Runs under /usr/bin/python3; prints one JSON line with both attacks' results."""
    import torch
    from torch.nn import functional as F
    from torch_reference import load_onnx_weights
    from train_mnist import MnistNN

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    model = MnistNN()
    load_onnx_weights(model, args.model)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    forward = model.forward_train if args.torch_fc == "conv" else model.forward

    x_all, y_all = load_data(args)
    x_all, y_all = torch.from_numpy(x_all), torch.from_numpy(y_all)
    parts = batches(args.n, args.batch)
    eps, alpha = args.eps, step_size(args)

    def gradient(x, y):
        x = x.clone().requires_grad_(True)
        z = forward(x)
        (g,) = torch.autograd.grad(F.cross_entropy(z, y, reduction="sum"), x)
        return z.detach(), g

    def predict(x):
        with torch.no_grad():
            return forward(x).argmax(1)

    def fgsm(x, y):
        z, g = gradient(x, y)
        x_adv = (x + eps * g.sign()).clamp(0.0, 1.0)
        return z.argmax(1), predict(x_adv)

    def pgd(x, y):
        lo, hi = (x - eps).clamp(min=0.0), (x + eps).clamp(max=1.0)
        x_adv, clean_pred = x, None
        for _ in range(args.steps):
            z, g = gradient(x_adv, y)
            if clean_pred is None:
                clean_pred = z.argmax(1)
            x_adv = torch.max(torch.min(x_adv + alpha * g.sign(), hi), lo)
        return clean_pred, predict(x_adv)

    result = {"version": torch.__version__, "threads": args.threads, "fc": args.torch_fc}
    warm = parts[0]
    gradient(x_all[warm], y_all[warm])
    for name, attack in (("fgsm", fgsm), ("pgd", pgd)):
        clean = np.zeros(args.n, dtype=bool)
        adv = np.zeros(args.n, dtype=bool)
        start = time.perf_counter()
        for part in parts:
            clean_pred, adv_pred = attack(x_all[part], y_all[part])
            clean[part] = (clean_pred == y_all[part]).numpy()
            adv[part] = (adv_pred == y_all[part]).numpy()
        result[name] = summary(time.perf_counter() - start, args.n, clean, adv)
        print(f"pytorch {name}: {result[name]['seconds']:.1f} s", file=sys.stderr)

    # One forward+backward against one forward, over the same batches: best of three passes.
    best = {"forward": float("inf"), "gradient": float("inf")}
    for _ in range(3):
        start = time.perf_counter()
        for part in parts:
            predict(x_all[part])
        best["forward"] = min(best["forward"], time.perf_counter() - start)
        start = time.perf_counter()
        for part in parts:
            gradient(x_all[part], y_all[part])
        best["gradient"] = min(best["gradient"], time.perf_counter() - start)
    result["gradient_over_forward"] = best["gradient"] / best["forward"]
    print(json.dumps(result))


def run_pytorch(args):
    if not os.path.exists(TORCH_PYTHON):
        return None, f"{TORCH_PYTHON} not found"
    cmd = [TORCH_PYTHON, os.path.abspath(__file__), "--torch-worker", "--n", str(args.n), "--threads",
           str(args.threads), "--batch", str(args.batch), "--eps", str(args.eps), "--steps", str(args.steps),
           "--data", args.data, "--model", args.model, "--torch-fc", args.torch_fc]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        return None, f"torch worker failed ({proc.returncode}):\n{proc.stderr.strip()[-2000:]}"
    lines = proc.stdout.strip().splitlines()
    return json.loads(lines[-1]), None


# ---------------------------------------------------------------- onnxruntime (this process)


def run_onnxruntime(args):
    if not args.grad_graph:
        return None, "no --grad-graph given (make one with `nnmend grad fixtures/mnist_paper.onnx -o FILE`)"
    if not os.path.exists(args.grad_graph):
        return None, f"gradient graph {args.grad_graph} not found"
    try:
        import onnxruntime as ort
    except ImportError as err:
        return None, f"onnxruntime not importable here ({err})"

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    providers = ["CPUExecutionProvider"]
    grad_sess = ort.InferenceSession(args.grad_graph, options, providers=providers)
    fwd_sess = ort.InferenceSession(args.model, options, providers=providers)
    inputs = {i.name for i in grad_sess.get_inputs()}
    outputs = {o.name for o in grad_sess.get_outputs()}
    if not {"pixels", "target"} <= inputs or not {"logits", "grad"} <= outputs:
        return None, f"{args.grad_graph}: inputs {sorted(inputs)}, outputs {sorted(outputs)}; " \
                     "expected inputs pixels, target and outputs logits, grad"
    fwd_input = fwd_sess.get_inputs()[0].name

    x_all, y_all = load_data(args)
    targets = np.eye(10, dtype=np.float32)[y_all]
    parts = batches(args.n, args.batch)
    eps, alpha = np.float32(args.eps), np.float32(step_size(args))

    def gradient(x, t):
        logits, grad = grad_sess.run(["logits", "grad"], {"pixels": x, "target": t})
        return logits, grad

    def fgsm(x, t):
        logits, grad = gradient(x, t)
        x_adv = np.clip(x + eps * np.sign(grad), np.float32(0), np.float32(1))
        return logits.argmax(1), gradient(x_adv, t)[0].argmax(1)

    def pgd(x, t):
        lo = np.maximum(x - eps, np.float32(0))
        hi = np.minimum(x + eps, np.float32(1))
        x_adv, clean_pred = x, None
        for _ in range(args.steps):
            logits, grad = gradient(x_adv, t)
            if clean_pred is None:
                clean_pred = logits.argmax(1)
            x_adv = np.clip(x_adv + alpha * np.sign(grad), lo, hi)
        return clean_pred, gradient(x_adv, t)[0].argmax(1)

    result = {"version": ort.__version__, "threads": args.threads}
    warm = parts[0]
    gradient(x_all[warm], targets[warm])
    fwd_sess.run(None, {fwd_input: x_all[warm]})
    for name, attack in (("fgsm", fgsm), ("pgd", pgd)):
        clean = np.zeros(args.n, dtype=bool)
        adv = np.zeros(args.n, dtype=bool)
        start = time.perf_counter()
        for part in parts:
            clean_pred, adv_pred = attack(x_all[part], targets[part])
            clean[part] = clean_pred == y_all[part]
            adv[part] = adv_pred == y_all[part]
        result[name] = summary(time.perf_counter() - start, args.n, clean, adv)
        print(f"onnxruntime {name}: {result[name]['seconds']:.1f} s", file=sys.stderr)

    # Best of three passes over the N images, each way.
    best = {"forward": float("inf"), "gradient": float("inf")}
    for _ in range(3):
        start = time.perf_counter()
        for part in parts:
            fwd_sess.run(None, {fwd_input: x_all[part]})
        best["forward"] = min(best["forward"], time.perf_counter() - start)
        start = time.perf_counter()
        for part in parts:
            gradient(x_all[part], targets[part])
        best["gradient"] = min(best["gradient"], time.perf_counter() - start)
    result["forward_seconds"] = best["forward"]
    result["gradient_seconds"] = best["gradient"]
    result["gradient_over_forward"] = best["gradient"] / best["forward"]
    return result, None


# ---------------------------------------------------------------- nnmend (child process)


def run_nnmend(args):
    if not os.path.exists(args.nnmend):
        return None, f"{args.nnmend} not found (cargo build --release)"
    result = {"threads": args.threads}
    runs = (
        ("fgsm", ["--method", "fgsm"]),
        ("pgd", ["--method", "pgd", "--steps", str(args.steps), "--keep-going"]),
        ("pgd_early_stop", ["--method", "pgd", "--steps", str(args.steps)]),
    )
    for name, extra in runs:
        cmd = [args.nnmend, "attack", args.model, "--data", args.data, "--split", "test", "--limit", str(args.n),
               "--eps", str(args.eps), *extra, "--threads", str(args.threads), "--batch", str(args.batch), "--backend", args.backend, "--json"]
        start = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            return None, f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{proc.stderr.strip()[-2000:]}"
        try:
            report = json.loads(proc.stdout)
            row = report["results"][0]
        except (ValueError, KeyError, IndexError) as err:
            return None, f"`{' '.join(cmd)}`: cannot read its JSON ({err}):\n{proc.stdout[-2000:]}"
        # The attack's own time: the clean pass (FGSM's gradients) plus the ε itself,
        # without loading the model and building the gradient graph.
        seconds = report.get("seconds") or wall
        result[name] = {
            "seconds": seconds,
            "wall_seconds": wall,
            "images_per_second": row.get("n", args.n) / seconds,
            "clean_accuracy": row.get("clean_accuracy"),
            "robust_accuracy": row.get("robust_accuracy"),
            "success_rate": row.get("success_rate"),
            "n": row.get("n"),
            "clean_seconds": report.get("clean_seconds"),
        }
        print(f"nnmend {name}: {seconds:.1f} s ({wall:.1f} s wall)", file=sys.stderr)
    # FGSM's clean pass runs the gradient graph over the N images, PGD's the forward
    # graph only: their ratio is a gradient step's cost in forward passes.
    if result["fgsm"]["clean_seconds"] and result["pgd"]["clean_seconds"]:
        result["gradient_over_forward"] = result["fgsm"]["clean_seconds"] / result["pgd"]["clean_seconds"]
    return result, None


# ---------------------------------------------------------------- report


def fmt(value, spec):
    return "n/a" if value is None else format(value, spec)


def table(args, peers):
    pgd = f"PGD-{args.steps}"
    lines = [
        f"MNIST-NN, first {args.n} test images, batch {args.batch}, {args.threads} thread(s), eps {args.eps}, "
        f"PGD step {step_size(args):.6g}, no random start",
        "",
        f"| peer | FGSM img/s | {pgd} img/s | clean acc | FGSM robust acc | {pgd} robust acc |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in peers.items():
        lines.append(
            f"| {name} | {r['fgsm']['images_per_second']:.1f} | {r['pgd']['images_per_second']:.2f} | "
            f"{fmt(r['fgsm']['clean_accuracy'], '.4f')} | {fmt(r['fgsm']['robust_accuracy'], '.4f')} | "
            f"{fmt(r['pgd']['robust_accuracy'], '.4f')} |"
        )
    if "nnmend" in peers and "pgd_early_stop" in peers["nnmend"]:
        r = peers["nnmend"]["pgd_early_stop"]
        lines.append(
            f"| nnmend, PGD with early stop | | {r['images_per_second']:.2f} | | | {fmt(r['robust_accuracy'], '.4f')} |"
        )
    if "nnmend" in peers:
        for other in ("pytorch", "onnxruntime"):
            if other in peers:
                speed = [peers["nnmend"][m]["images_per_second"] / peers[other][m]["images_per_second"]
                         for m in ("fgsm", "pgd")]
                lines.append(f"| nnmend / {other} (speed) | {speed[0]:.2f}x | {speed[1]:.2f}x | | | |")
    lines.append("")
    for name in ("pytorch", "onnxruntime", "nnmend"):
        if name in peers and "gradient_over_forward" in peers[name]:
            lines.append(f"- {name}: one gradient step costs {peers[name]['gradient_over_forward']:.2f} forward passes")
    if "pytorch" in peers:
        lines.append(f"- pytorch {peers['pytorch']['version']}, FC layers as "
                     f"{'convolutions (oneDNN)' if peers['pytorch']['fc'] == 'conv' else 'nn.Linear'}")
    if "onnxruntime" in peers:
        lines.append(f"- onnxruntime {peers['onnxruntime']['version']}, gradient graph {args.grad_graph}")
    if "nnmend" in peers:
        walls = ", ".join(f"{m} {peers['nnmend'][m]['wall_seconds']:.1f} s" for m in ("fgsm", "pgd"))
        lines.append(f"- nnmend process wall clock (with loading): {walls}")
    for method in ("fgsm", "pgd"):
        accs = {n: r[method]["robust_accuracy"] for n, r in peers.items() if r[method]["robust_accuracy"] is not None}
        if len(accs) > 1:
            spread = max(accs.values()) - min(accs.values())
            lines.append(f"- {method} robust accuracy spread across peers: {spread:.4f} "
                         f"({round(spread * args.n)} image(s))")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="first N test images (default 2000)")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: N = {QUICK_N}")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=40, help="PGD steps (default 40)")
    parser.add_argument("--data", default="../shared/datasets/mnist")
    parser.add_argument("--model", default="fixtures/mnist_paper.onnx")
    parser.add_argument("--grad-graph", help="nnmend's gradient graph of --model (onnxruntime peer)")
    parser.add_argument("--nnmend", default="target/release/nnmend")
    parser.add_argument("--backend", default="tract", choices=["tract", "ort"],
                        help="nnmend's engine (ort needs a build with --features ort)")
    parser.add_argument("--torch-fc", choices=["conv", "linear"], default="conv",
                        help="pytorch peer: FC layers as convolutions (default) or nn.Linear")
    parser.add_argument("--peers", default="pytorch,onnxruntime,nnmend", help="comma-separated subset to run")
    parser.add_argument("--json", help="also write the raw numbers here")
    parser.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.n = QUICK_N
    if args.n < 1 or args.threads < 1 or args.batch < 1 or args.steps < 1 or args.eps <= 0:
        parser.error("--n, --threads, --batch and --steps must be positive, --eps > 0")
    if args.torch_worker:
        torch_worker(args)
        return
    wanted = [p.strip() for p in args.peers.split(",") if p.strip()]
    runners = {"pytorch": run_pytorch, "onnxruntime": run_onnxruntime, "nnmend": run_nnmend}
    unknown = set(wanted) - set(runners)
    if unknown:
        parser.error(f"unknown peer(s) {sorted(unknown)}; choose from {list(runners)}")

    peers = {}
    for name in wanted:
        print(f"running {name} ...", file=sys.stderr)
        result, why = runners[name](args)
        if result is None:
            print(f"skipping {name}: {why}", file=sys.stderr)
        else:
            peers[name] = result
    if not peers:
        raise SystemExit("no peer could run")
    print(table(args, peers))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": {k: v for k, v in vars(args).items() if k != "torch_worker"}, "peers": peers}, f,
                      indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()

"""Choose the robust repair's defaults on a validation split of the MNIST training set.

The test images are never looked at. MNIST-NN's linear hybrid (and, with --kernel, its
kernel hybrid) is fitted on the first 50,000 training images; training images 50,000
to 59,999 are the validation set (clean accuracy on all 10,000, PGD robust accuracy
under the repair protocol on the first --pgd-limit). The repair samples of round 0 are
PGD examples of the hybrid made from the first 2,000 training images; later rounds
attack a seeded random pool of the first 50,000. Each configuration is one
`nnmend repair ... --json` run; the table on stdout has its clean drawdown, robust
accuracy, efficacy over every round's samples, rounds and seconds.

Run from the project root with the pyenv python (numpy):
    python3 tools/bench/repair_defaults.py --nnmend target/release/nnmend \
        --work target/defaults --config "rounds=3" --config "rounds=3,margin=2"
A configuration is comma-separated `option=value` pairs of `nnmend repair` (without
the dashes; `mode=paper` etc.). Results are appended to WORK/results.jsonl.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "common"))
from mnist_idx import FILES, MNIST_DIR, read_idx  # noqa: E402

FIT_LIMIT = 50000


def run(cmd, log):
    started = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True)
    with open(log, "a") as f:
        f.write(" ".join(cmd) + "\n" + out.stderr + "\n")
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr}")
    return out.stdout, time.time() - started


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nnmend", default="target/release/nnmend")
    p.add_argument("--work", default="target/defaults")
    p.add_argument("--model", default="fixtures/mnist_paper.onnx")
    p.add_argument("--eps", default="0.1")
    p.add_argument("--pgd-limit", default="1000")
    p.add_argument("--kernel", action="store_true", help="repair the kernel hybrid instead")
    p.add_argument("--gamma", help="with --kernel: the RBF width of its fit (default: nnmend fit's)")
    p.add_argument("--config", action="append", default=[], help="option=value,... of nnmend repair")
    args = p.parse_args()
    os.makedirs(args.work, exist_ok=True)
    w = lambda name: os.path.join(args.work, name)  # noqa: E731
    log = w("log.txt")

    val = w("val.npz")
    if not os.path.exists(val):
        images, labels = FILES["train"]
        x = read_idx(os.path.join(MNIST_DIR, images))[FIT_LIMIT:]
        y = read_idx(os.path.join(MNIST_DIR, labels))[FIT_LIMIT:].astype(np.int64)
        np.savez(val, x=x, y=y)
    if args.gamma and not args.kernel:
        raise SystemExit("--gamma shapes the kernel hybrid: use it with --kernel")
    head = "kernel" if args.kernel else "linear"
    tag = f"{head}_g{args.gamma}" if args.gamma else head
    hybrid = w(f"{tag}.onnx")
    if not os.path.exists(hybrid):
        cmd = [args.nnmend, "fit", args.model, "--train", MNIST_DIR, "--limit", str(FIT_LIMIT), "-o", hybrid]
        if args.kernel:
            cmd += ["--head", "kernel"]
        if args.gamma:
            cmd += ["--gamma", args.gamma]
        run(cmd, log)
    adv = w(f"adv_{tag}.npz")
    if not os.path.exists(adv):
        run([args.nnmend, "attack", hybrid, "--data", MNIST_DIR, "--split", "train", "--limit", "2000",
             "--eps", args.eps, "--method", "pgd", "--steps", "10", "--random-start", "-o", adv], log)

    results = w("results.jsonl")
    print("config | clean before | clean after | robust before | robust after | efficacy | rounds | seconds")
    for config in args.config:
        extra = []
        for pair in filter(None, config.split(",")):
            key, _, value = pair.partition("=")
            extra += [f"--{key}", value] if value else [f"--{key}"]
        out = w("repaired.onnx")
        stdout, seconds = run([args.nnmend, "repair", hybrid, "--adv", adv, "--train", MNIST_DIR, "--limit",
                               str(FIT_LIMIT), "--test", val, "--pgd-limit", args.pgd_limit, "--eps", args.eps,
                               "-o", out, "--json", "--force"] + extra, log)
        d = json.loads(stdout)
        rob = d.get("robustness") or {}
        row = {
            "config": config, "head": head, "gamma": args.gamma, "eps": float(args.eps),
            "clean_before": d["accuracy"]["before"], "clean_after": d["accuracy"]["after"],
            "robust_before": rob.get("before", {}).get("robust_accuracy"),
            "robust_after": rob.get("after", {}).get("robust_accuracy"),
            "efficacy": d["efficacy"], "rounds": d["rounds"], "chosen_round": d["chosen_round"],
            "repair_seconds": sum(r["lp_seconds"] + r["attack_seconds"] for r in d["rounds"]),
            "command_seconds": seconds,
        }
        with open(results, "a") as f:
            f.write(json.dumps(row) + "\n")
        pct = lambda v: "-" if v is None else f"{100 * v:.2f}"  # noqa: E731
        print(f"{config} | {pct(row['clean_before'])} | {pct(row['clean_after'])} | {pct(row['robust_before'])} | "
              f"{pct(row['robust_after'])} | {pct(row['efficacy'])} | {len(d['rounds'])} (chose {d['chosen_round']}) | "
              f"{row['repair_seconds']:.1f}", flush=True)


if __name__ == "__main__":
    main()

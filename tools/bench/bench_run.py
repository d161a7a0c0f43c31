"""Time the whole MNIST experiment: `nnmend run` against the seed paper's stack
(tools/bench/paper_stack.py: PyTorch, scikit-learn, cvxopt), same model, data, radii, limits
and seed, each in its own child process; wall time and peak RSS of each.

Needs only the standard library (any python3); the children need a release build of
nnmend and the Debian `/usr/bin/python3` with the packages paper_stack.py names.

Run from the project root:
    python3 tools/bench/bench_run.py [--nnmend target/release/nnmend]
        [--model fixtures/mnist_paper.onnx] [--data ../shared/datasets/mnist]
        [--eps 0.05,0.1] [--train-limit N] [--test-limit N] [--repair-samples 1]
        [--threads 2] [--seed 0] [--kh-train N] [--timeout S]
        [--nnmend-arg ARG ...] [--stack-python /usr/bin/python3]
        [--skip-nnmend] [--skip-stack] [--no-time-v] [--keep DIR] [--json-out FILE]

The children:
- nnmend: `nnmend run MODEL --train DATA --test DATA --eps E --out DIR --attack fgsm
  --mode paper --repair-samples N --seed S --threads T --json`, with `--limit N` when
  both limits are equal, else `--train-limit`/`--test-limit`; its cells are read from
  DIR/report.json. --nnmend-arg appends an argument (repeat it for several).
- paper stack: `/usr/bin/python3 tools/bench/paper_stack.py` with the same settings and
  `--json-out`. --kh-train caps its KH training set (nnmend's is not capped; the table
  says so).
Each child runs under `/usr/bin/time -v` when that exists (its "Maximum resident set
size"); otherwise the child is waited for with os.wait4 and its ru_maxrss is read.
Either way the figure is the largest RSS of the child and of the processes it waited
for. Wall time is measured here, around the child. A child past --timeout is killed
and reported as such.

Prints a table (wall time, peak RSS, exit status, ratios nnmend / paper stack), the
phase timings each reported, and, when both wrote cells, the accuracy cells side by side.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GNU_TIME = "/usr/bin/time"


def gnu_time_works():
    if not os.access(GNU_TIME, os.X_OK):
        return False
    try:
        out = subprocess.run([GNU_TIME, "-v", "true"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "Maximum resident set size" in out.stderr


def run_child(cmd, log_path, timeout, use_gnu_time):
    """Runs cmd; returns {"cmd", "rc", "wall_s", "peak_rss_mb", "timed_out", "rss_source"}.
    The child's stdout and stderr go to log_path."""
    res = {"cmd": cmd, "timed_out": False}
    time_file = None
    full = list(cmd)
    if use_gnu_time:
        fd, time_file = tempfile.mkstemp(prefix="bench_run_time_")
        os.close(fd)
        full = [GNU_TIME, "-v", "-o", time_file] + full
    with open(log_path, "w") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(full, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = None if timeout is None else t0 + timeout
        rusage = None
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                rusage = ru
                break
            if deadline is not None and time.perf_counter() > deadline:
                res["timed_out"] = True
                os.killpg(proc.pid, signal.SIGKILL)
                pid, status, rusage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        res["wall_s"] = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # so Popen does not wait again
    res["rc"] = proc.returncode
    # ru_maxrss is in KiB on Linux; it covers the child and the children it waited for.
    res["peak_rss_mb"] = rusage.ru_maxrss / 1024.0
    res["rss_source"] = "os.wait4 ru_maxrss"
    if time_file:
        with open(time_file) as f:
            text = f.read()
        os.unlink(time_file)
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("Maximum resident set size (kbytes):"):
                res["peak_rss_mb"] = int(line.rsplit(":", 1)[1]) / 1024.0
                res["rss_source"] = "/usr/bin/time -v"
            elif line.startswith("Exit status:"):
                res["rc"] = int(line.rsplit(":", 1)[1])
            elif line.startswith("User time (seconds):"):
                res["user_s"] = float(line.rsplit(":", 1)[1])
            elif line.startswith("System time (seconds):"):
                res["sys_s"] = float(line.rsplit(":", 1)[1])
    if "user_s" not in res and rusage is not None:
        res["user_s"], res["sys_s"] = rusage.ru_utime, rusage.ru_stime
    return res


def nnmend_cmd(args, out_dir):
    cmd = [args.nnmend, "run", args.model, "--train", args.data, "--test", args.data,
           "--eps", args.eps, "--out", out_dir, "--attack", "fgsm", "--mode", "paper",
           "--repair-samples", str(args.repair_samples), "--seed", str(args.seed),
           "--threads", str(args.threads), "--json"]
    if args.train_limit is not None and args.train_limit == args.test_limit:
        cmd += ["--limit", str(args.train_limit)]
    else:
        if args.train_limit is not None:
            cmd += ["--train-limit", str(args.train_limit)]
        if args.test_limit is not None:
            cmd += ["--test-limit", str(args.test_limit)]
    return cmd + list(args.nnmend_arg)


def stack_cmd(args, json_out):
    cmd = [args.stack_python, os.path.join(ROOT, "tools", "bench", "paper_stack.py"), "--model", args.model,
           "--data", args.data, "--eps", args.eps, "--repair-samples", str(args.repair_samples),
           "--threads", str(args.threads), "--seed", str(args.seed), "--json-out", json_out]
    for flag, value in (("--train-limit", args.train_limit), ("--test-limit", args.test_limit),
                        ("--kh-train", args.kh_train)):
        if value is not None:
            cmd += [flag, str(value)]
    return cmd


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def cell_key(c):
    eps = c.get("eps")
    return (c.get("model"), c.get("test_set"), None if eps is None else round(float(eps), 6))


def fmt(v, spec, unit=""):
    return "—" if v is None else f"{v:{spec}}{unit}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nnmend", default=os.path.join(ROOT, "target/release/nnmend"))
    ap.add_argument("--model", default=os.path.join(ROOT, "fixtures/mnist_paper.onnx"))
    ap.add_argument("--data", default=os.path.join(ROOT, "../shared/datasets/mnist"))
    ap.add_argument("--eps", default="0.05,0.1")
    ap.add_argument("--train-limit", type=int)
    ap.add_argument("--test-limit", type=int)
    ap.add_argument("--repair-samples", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kh-train", type=int, help="paper stack only: fit KH on the first N training features")
    ap.add_argument("--timeout", type=float, help="kill a child after this many seconds")
    ap.add_argument("--nnmend-arg", action="append", default=[], help="extra argument for `nnmend run` (repeatable)")
    ap.add_argument("--stack-python", default="/usr/bin/python3")
    ap.add_argument("--skip-nnmend", action="store_true")
    ap.add_argument("--skip-stack", action="store_true")
    ap.add_argument("--keep", help="keep the children's outputs and logs in this folder (default: a temporary one, removed)")
    ap.add_argument("--no-time-v", action="store_true", help="read the peak RSS with os.wait4 even where /usr/bin/time exists")
    ap.add_argument("--json-out", help="write the figures here")
    args = ap.parse_args()

    use_gnu_time = not args.no_time_v and gnu_time_works()
    work = args.keep or tempfile.mkdtemp(prefix="bench_run_")
    os.makedirs(work, exist_ok=True)
    runs = {}
    try:
        if not args.skip_nnmend and not os.access(args.nnmend, os.X_OK):
            print(f"{args.nnmend}: not an executable; build it (cargo build --release) or pass --nnmend, "
                  "or --skip-nnmend", file=sys.stderr)
            return 2
        if not args.skip_nnmend:
            # `nnmend run` creates its output folder itself and refuses an existing one.
            out_dir = os.path.join(work, "nnmend_out")
            if os.path.isdir(out_dir):
                shutil.rmtree(out_dir)
            cmd = nnmend_cmd(args, out_dir)
            print("nnmend: " + " ".join(cmd), file=sys.stderr, flush=True)
            r = run_child(cmd, os.path.join(work, "nnmend.log"), args.timeout, use_gnu_time)
            r["report"] = read_json(os.path.join(out_dir, "report.json"))
            runs["nnmend"] = r
        if not args.skip_stack:
            json_out = os.path.join(work, "paper_stack.json")
            cmd = stack_cmd(args, json_out)
            print("paper stack: " + " ".join(cmd), file=sys.stderr, flush=True)
            r = run_child(cmd, os.path.join(work, "paper_stack.log"), args.timeout, use_gnu_time)
            r["report"] = read_json(json_out)
            runs["paper_stack"] = r
        for name, r in runs.items():
            if r["rc"] != 0 or r["timed_out"]:
                log_name = "nnmend.log" if name == "nnmend" else "paper_stack.log"
                with open(os.path.join(work, log_name)) as f:
                    tail = f.read()[-3000:]
                print(f"--- {name} failed (exit {r['rc']}{', timed out' if r['timed_out'] else ''}); its log ends:\n{tail}",
                      file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print(f"MNIST run: model {os.path.relpath(args.model, ROOT)}, eps {args.eps}, train limit {args.train_limit or 'all'}, "
          f"test limit {args.test_limit or 'all'}, {args.repair_samples} repair sample(s), {args.threads} thread(s), "
          f"seed {args.seed}" + (f"; paper stack's KH on {args.kh_train} training images only" if args.kh_train else ""))
    print(f"peak RSS from {'/usr/bin/time -v' if use_gnu_time else 'os.wait4 ru_maxrss'}\n")
    print("| run | exit | wall | user + sys CPU | peak RSS |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, r in runs.items():
        cpu = (r.get("user_s") or 0) + (r.get("sys_s") or 0)
        status = f"{r['rc']}" + (" (killed: timeout)" if r["timed_out"] else "")
        print(f"| {name} | {status} | {r['wall_s']:.1f} s | {cpu:.1f} s | {r['peak_rss_mb']:.0f} MB |")
    ratios = None
    if "nnmend" in runs and "paper_stack" in runs:
        a, b = runs["nnmend"], runs["paper_stack"]
        ratios = {"wall": a["wall_s"] / b["wall_s"] if b["wall_s"] else None,
                  "peak_rss": a["peak_rss_mb"] / b["peak_rss_mb"] if b["peak_rss_mb"] else None}
        print(f"| nnmend / paper stack | | {fmt(ratios['wall'], '.3f', '×')} | | {fmt(ratios['peak_rss'], '.3f', '×')} |")

    for name, r in runs.items():
        t = (r.get("report") or {}).get("timings")
        if t:
            print(f"\n{name} phases: " + ", ".join(
                f"{k} {v:.2f} s" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in t.items()))

    cells = None
    reports = {n: (r.get("report") or {}).get("cells") for n, r in runs.items()}
    if reports.get("nnmend") and reports.get("paper_stack"):
        ours = {cell_key(c): c["accuracy"] for c in reports["nnmend"]}
        theirs = {cell_key(c): c["accuracy"] for c in reports["paper_stack"]}
        cells = []
        print("\n| model | test set | eps | nnmend | paper stack | difference (pp) |")
        print("| --- | --- | ---: | ---: | ---: | ---: |")
        order = {n: i for i, n in enumerate(("Data", "NADV", "HADV", "RHADV", "NN", "LH", "KH", "RLH"))}
        keys = set(theirs) | set(ours)
        # A clean-set cell nnmend gives without an eps stands in for the stack's per-eps ones.
        keys -= {k for k in ours if k[2] in (None, 0.0) and any(t[:2] == k[:2] and t[2] != k[2] for t in theirs)}
        for key in sorted(keys, key=lambda k: (k[2] if k[2] is not None else -1, order.get(k[1], 9), order.get(k[0], 9))):
            a = ours.get(key)
            b = theirs.get(key)
            if a is None and key[1] == "Data":
                # nnmend may report the clean set once, without an eps (or at 0).
                a = ours.get((key[0], key[1], None), ours.get((key[0], key[1], 0.0)))
            diff = None if a is None or b is None else 100 * (a - b)
            cells.append({"model": key[0], "test_set": key[1], "eps": key[2], "nnmend": a, "paper_stack": b})
            pa = None if a is None else 100 * a
            pb = None if b is None else 100 * b
            print(f"| {key[0]} | {key[1]} | {fmt(key[2], 'g')} | {fmt(pa, '.2f', '%')} | {fmt(pb, '.2f', '%')} | {fmt(diff, '+.2f')} |")

    if args.json_out:
        doc = {
            "settings": {k: v for k, v in vars(args).items() if k not in ("json_out",)},
            "rss_source": "/usr/bin/time -v" if use_gnu_time else "os.wait4 ru_maxrss",
            "runs": {n: {k: v for k, v in r.items()} for n, r in runs.items()},
            "ratios": ratios,
            "cells": cells,
        }
        with open(args.json_out, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
    failed = any(r["rc"] != 0 or r["timed_out"] for r in runs.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Time the margin LP's solvers on identical instances written by `nnmend repair --dump-lp`:
nnmend's structured interior-point method, clarabel (`nnmend lp --solver clarabel`) and
scipy's HiGHS (`tools/reference/lp_reference.py`, `linprog(method="highs")` on the
whole primal, every constraint written out; one thread).

Needs the pyenv `python3` with numpy and scipy (tools/requirements.txt).

Run from the project root:
    python3 tools/bench/bench_margin_lp.py DUMP.json [DUMP.json ...] [--nnmend target/debug/nnmend]
        [--threads 1,2] [--timeout 600]

For each instance and each thread count: the seconds of each nnmend solver (the solve
only, from `nnmend lp --json`), HiGHS's seconds (its `linprog` call only), the
objectives' relative difference to HiGHS's, and the ratios clarabel / IPM and
HiGHS / IPM. A solver that does not finish within --timeout seconds is reported as
such, and its ratio becomes a lower bound.
"""

import argparse
import json
import os
import subprocess
import sys


def timed(cmd, timeout):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr}")
    return json.loads(out.stdout)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dumps", nargs="+")
    p.add_argument("--nnmend", default="target/debug/nnmend")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--timeout", type=float, default=600)
    args = p.parse_args()
    reference = os.path.join(os.path.dirname(__file__), "..", "reference", "lp_reference.py")
    print("dump | samples | threads | IPM s (pairs, its) | clarabel s | HiGHS s (1 thread) | clarabel/IPM | HiGHS/IPM | max rel. diff")
    for dump in args.dumps:
        highs = timed([sys.executable, reference, dump], args.timeout)
        for threads in [int(t) for t in args.threads.split(",")]:
            runs = {}
            for solver in ("ipm", "clarabel"):
                runs[solver] = timed([args.nnmend, "lp", dump, "--json", "--threads", str(threads),
                                      "--solver", solver], args.timeout)
            ipm = runs["ipm"]
            cells, diffs = [], []
            for r in (runs["clarabel"], highs):
                if r is None:
                    cells.append(f"> {args.timeout:.0f}")
                else:
                    cells.append(f"{r['seconds']:.2f}")
                    diffs.append(abs(r["objective"] - ipm["objective"]) / max(1.0, abs(r["objective"])))
            ratio = lambda r: f"> {args.timeout / ipm['seconds']:.1f}x" if r is None else f"{r['seconds'] / ipm['seconds']:.1f}x"  # noqa: E731
            print(f"{os.path.basename(dump)} | {ipm['samples']} | {threads} | {ipm['seconds']:.2f} "
                  f"({ipm['active_constraints']}, {ipm['iterations']}) | {cells[0]} | {cells[1]} | "
                  f"{ratio(runs['clarabel'])} | {ratio(highs)} | {max(diffs, default=0):.1e}", flush=True)


if __name__ == "__main__":
    main()

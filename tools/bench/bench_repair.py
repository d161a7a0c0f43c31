"""Time nnmend's repair LP against scipy's HiGHS dual simplex and cvxopt (the seed
paper's solver) on identical instances written by `nnmend repair --dump-lp`.

Needs the pyenv `python3` with numpy, scipy and cvxopt (`pip install cvxopt`), and a
release build (`cargo build --release`).

Run from the project root:
    python3 tools/bench/bench_repair.py DUMP.json [DUMP.json ...] [--threads 1,2]
        [--cvxopt-timeout 600] [--cvxopt-classes 1] [--classes K] [--json OUT.json]

For each paper-mode instance (S samples, d features, k classes):
- nnmend: `nnmend lp DUMP --json --threads T` for each T (all k classes; the time is
  the whole solve, classes side by side when T > 1);
- HiGHS: `scipy.optimize.linprog(method="highs-ds")`, class by class on one thread,
  on the primal LP (variables gamma+, gamma-, delta >= 0);
- cvxopt: `cvxopt.solvers.lp` on the same LP with sparse matrices, on the first
  --cvxopt-classes classes only (it is slow), each in a child process with a wall-time
  limit and a 20 GB address-space limit; a class that does not finish is reported as
  such, and the ratio becomes a lower bound.
The objectives are compared (relative difference to HiGHS), and the ratios printed:
HiGHS time / nnmend time over all classes, and cvxopt time / nnmend time over the
classes cvxopt ran (nnmend's per-class time, from its JSON, at T = 1).
"""

import argparse
import json
import multiprocessing as mp
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import csr_matrix, hstack, identity, vstack

BIN = os.environ.get("NNMEND_BIN", "target/release/nnmend")


def primal(x, r, bias):
    """(c, A_ub, b_ub) of one class's LP in the form minimise c.v, A v <= b, v >= 0."""
    s, d = x.shape
    xs = csr_matrix(x)
    ones = csr_matrix(np.ones((s, 1)))
    up = [xs, -xs] + ([ones, -ones] if bias else []) + [-identity(s, format="csr")]
    down = [-xs, xs] + ([-ones, ones] if bias else []) + [-identity(s, format="csr")]
    a = vstack([hstack(up), hstack(down)]).tocsr()
    b = np.concatenate([r, -r])
    c = np.concatenate([np.ones(2 * d), np.zeros(2 if bias else 0), np.ones(s)])
    return c, a, b


def highs(x, r, bias):
    c, a, b = primal(x, r, bias)
    t0 = time.perf_counter()
    res = linprog(c, A_ub=a, b_ub=b, bounds=(0, None), method="highs-ds")
    return (float(res.fun) if res.success else None), time.perf_counter() - t0


def cvxopt_child(x, r, bias, out):
    resource.setrlimit(resource.RLIMIT_AS, (20 << 30, 20 << 30))
    import cvxopt
    from cvxopt import solvers

    solvers.options["show_progress"] = False
    c, a, b = primal(x, r, bias)
    n = a.shape[1]
    # v >= 0 as -I v <= 0, stacked under A.
    g = vstack([a, -identity(n, format="csr")]).tocoo()
    h = np.concatenate([b, np.zeros(n)])
    G = cvxopt.spmatrix(g.data.tolist(), g.row.tolist(), g.col.tolist(), size=g.shape)
    t0 = time.perf_counter()
    sol = solvers.lp(cvxopt.matrix(c), G, cvxopt.matrix(h))
    took = time.perf_counter() - t0
    out.put((sol["status"], float(sol["primal objective"]) if sol["primal objective"] is not None else None, took))


def cvxopt_class(x, r, bias, timeout):
    """(objective or None, seconds, outcome)."""
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=cvxopt_child, args=(x, r, bias, q))
    t0 = time.perf_counter()
    p.start()
    p.join(timeout)
    if p.is_alive():
        p.kill()
        p.join()
        return None, time.perf_counter() - t0, f"killed after {timeout} s"
    if p.exitcode != 0 or q.empty():
        return None, time.perf_counter() - t0, f"failed (exit {p.exitcode}; memory limit 20 GB)"
    status, obj, took = q.get()
    return obj, took, status


def nnmend(dump, threads):
    out = subprocess.run([BIN, "lp", dump, "--json", "--threads", str(threads)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dumps", nargs="+")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--cvxopt-timeout", type=float, default=600)
    ap.add_argument("--cvxopt-classes", type=int, default=1)
    ap.add_argument("--no-cvxopt", action="store_true")
    ap.add_argument("--classes", type=int, help="keep only the first K classes of each instance (written to a temporary dump that every solver reads)")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    rows = []
    for dump in args.dumps:
        with open(dump) as f:
            inst = json.load(f)
        if inst.get("mode", "paper") != "paper":
            print(f"{dump}: not a paper-mode instance, skipped", file=sys.stderr)
            continue
        name = os.path.basename(dump)
        if args.classes and args.classes < len(inst["classes"]):
            inst["classes"] = inst["classes"][: args.classes]
            tmp = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
            json.dump(inst, tmp)
            tmp.close()
            dump = tmp.name
        x = np.asarray(inst["x"], dtype=np.float64)
        bias = bool(inst.get("repair_bias", False))
        rs = [np.asarray(c["r"], dtype=np.float64) for c in inst["classes"]]
        s, d = x.shape
        row = {"instance": name, "samples": s, "features": d, "classes": len(rs)}
        for t in threads:
            res = nnmend(dump, t)
            row[f"nnmend_{t}t_seconds"] = res["seconds"]
            row[f"nnmend_{t}t_status"] = res["status"]
            if t == 1:
                row["nnmend_objective"] = res["objective"]
                row["nnmend_gap"] = res["gap"]
                per_class = [c["seconds"] for c in res["classes"]]
        print(f"{dump}: S={s} d={d} k={len(rs)} nnmend {[row[f'nnmend_{t}t_seconds'] for t in threads]}", file=sys.stderr)
        objs, secs = [], []
        for r in rs:
            o, t = highs(x, r, bias)
            objs.append(o)
            secs.append(t)
        row["highs_seconds"] = sum(secs)
        row["highs_objective"] = sum(objs) if None not in objs else None
        if row["highs_objective"] is not None:
            row["objective_rel_diff"] = abs(row["nnmend_objective"] - row["highs_objective"]) / max(1.0, abs(row["highs_objective"]))
        print(f"  HiGHS {row['highs_seconds']:.1f} s", file=sys.stderr)
        if not args.no_cvxopt:
            ran = []
            for i, r in enumerate(rs[: args.cvxopt_classes]):
                o, t, outcome = cvxopt_class(x, r, bias, args.cvxopt_timeout)
                ran.append({"class": i, "objective": o, "seconds": t, "outcome": outcome, "highs_objective": objs[i]})
                print(f"  cvxopt class {i}: {outcome}, {t:.1f} s", file=sys.stderr)
            row["cvxopt"] = ran
            done = [c for c in ran if c["objective"] is not None]
            cv_time = sum(c["seconds"] for c in ran)
            nn_time = sum(per_class[: len(ran)])
            row["cvxopt_vs_nnmend"] = cv_time / nn_time
            row["cvxopt_ratio_is_lower_bound"] = len(done) < len(ran)
        for t in threads:
            row[f"highs_vs_nnmend_{t}t"] = row["highs_seconds"] / row[f"nnmend_{t}t_seconds"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| S | d | k | nnmend 1 thread | nnmend 2 threads | HiGHS dual simplex | HiGHS / nnmend (1t, 2t) | cvxopt (classes) | cvxopt / nnmend | objective rel. diff |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        cv = row.get("cvxopt") or []
        cv_txt = ", ".join(f"{c['seconds']:.0f} s" + ("" if c["objective"] is not None else f" ({c['outcome']})") for c in cv) or "—"
        ratio = row.get("cvxopt_vs_nnmend")
        ratio_txt = "—" if ratio is None else (">" if row["cvxopt_ratio_is_lower_bound"] else "") + f"{ratio:.0f}×"
        t1 = row.get("nnmend_1t_seconds")
        t2 = row.get("nnmend_2t_seconds")
        print(
            f"| {row['samples']} | {row['features']} | {row['classes']} | {t1:.1f} s | {t2:.1f} s | {row['highs_seconds']:.1f} s | "
            f"{row.get('highs_vs_nnmend_1t', 0):.1f}×, {row.get('highs_vs_nnmend_2t', 0):.1f}× | {cv_txt} | {ratio_txt} | {row.get('objective_rel_diff', float('nan')):.1e} |"
        )
    if args.json:
        with tempfile.NamedTemporaryFile("w", dir=os.path.dirname(os.path.abspath(args.json)), delete=False) as f:
            json.dump(rows, f, indent=2)
        os.replace(f.name, args.json)


if __name__ == "__main__":
    main()

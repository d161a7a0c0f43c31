"""Solves one certified-repair LP with clarabel (qdldl and faer) and HiGHS (interior
point and dual simplex), each from scratch at one thread, and prints time, iterations
and objective.

The program is a JSON file {"rows", "cols", "q", "b", "r", "c", "v"}: minimise qᵀx
subject to Ax ≤ b with A given by its (row r, column c, value v) entries and x free,
the form in which `repair --certify` hands its restricted programs to clarabel
(Ax + s = b, s ≥ 0). nnmend does not write these files; the one measured in
docs/BENCHMARKS.md came from a build that wrote each round's program for that
measurement only.

    python tools/bench/bench_certified_lp.py lp10.json
"""

import json
import sys
import time

import clarabel
import highspy
import numpy as np
import scipy.sparse as sp


def load(path):
    d = json.load(open(path))
    a = sp.csc_matrix((d["v"], (d["r"], d["c"])), shape=(d["rows"], d["cols"]))
    return np.array(d["q"]), a, np.array(d["b"])


def highs(q, a, b, solver):
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("solver", solver)
    h.setOptionValue("threads", 1)
    lp = highspy.HighsLp()
    m, n = a.shape
    lp.num_col_, lp.num_row_ = n, m
    lp.col_cost_ = q
    lp.col_lower_ = np.full(n, -highspy.kHighsInf)
    lp.col_upper_ = np.full(n, highspy.kHighsInf)
    lp.row_lower_ = np.full(m, -highspy.kHighsInf)
    lp.row_upper_ = b
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = a.indptr, a.indices, a.data
    h.passModel(lp)
    t = time.time()
    h.run()
    seconds = time.time() - t
    info = h.getInfo()
    return seconds, info.simplex_iteration_count, info.objective_function_value, h.getModelStatus()


def clarabel_solve(q, a, b, method):
    s = clarabel.DefaultSettings()
    s.verbose, s.direct_solve_method, s.max_threads = False, method, 1
    p = sp.csc_matrix((a.shape[1], a.shape[1]))
    t = time.time()
    sol = clarabel.DefaultSolver(p, q, a, b, [clarabel.NonnegativeConeT(a.shape[0])], s).solve()
    return time.time() - t, sol.iterations, sol.obj_val, sol.status


def main():
    for path in sys.argv[1:]:
        q, a, b = load(path)
        print(f"{path}: {a.shape[0]} rows, {a.shape[1]} variables, {a.nnz} non-zeros")
        for name, run in [
            ("clarabel qdldl", lambda: clarabel_solve(q, a, b, "qdldl")),
            ("clarabel faer", lambda: clarabel_solve(q, a, b, "faer")),
            ("HiGHS ipm", lambda: highs(q, a, b, "ipm")),
            ("HiGHS simplex", lambda: highs(q, a, b, "simplex")),
        ]:
            seconds, iterations, objective, status = run()
            print(f"  {name:15} {seconds:8.2f} s  {iterations:6} iterations  {objective:.6f}  {status}")


if __name__ == "__main__":
    main()

"""Solve a repair LP of the seed paper's form with scipy's HiGHS, as a reference.

Needs the pyenv `python3` with numpy and scipy. The Rust tests call it on instances
they generate, to check nnmend's optimum.

Run from the project root:
    python3 tools/reference/lp_reference.py INSTANCE.json

INSTANCE.json holds `x` (S rows of d features), `r` (S residuals) and `repair_bias`;
or, as `nnmend repair --dump-lp` writes it, `classes` (a list of {`r`}) in place of
`r`, one program per class, whose objectives add up. A margin-mode dump (`"mode":
"margin"`, with `x`, `scores`, `labels`, `margin`, `price`) is solved as the margin
program, every constraint written out (see `solve_margin`).
The program, for one class:
    minimise  sum_j |gamma_j| + sum_s delta_s
    subject to  -delta_s <= x_s . gamma (+ beta) - r_s <= delta_s,  delta >= 0
(beta free and not in the objective). Prints one JSON line: `objective`, `status`
(scipy's message) and `seconds`. Exit codes: 0 solved, 1 not solved or bad input,
2 usage.
"""

import json
import sys
import time

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import csr_matrix, hstack, identity, vstack


def main(argv):
    if len(argv) != 1:
        print("usage: lp_reference.py INSTANCE.json", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        inst = json.load(f)
    if inst.get("mode") == "margin":
        fun, took, message = solve_margin(inst)
        print(json.dumps({"objective": fun, "status": message, "seconds": took}))
        return 0 if fun is not None else 1
    x = np.asarray(inst["x"], dtype=np.float64)
    bias = bool(inst.get("repair_bias", False))
    residuals = [c["r"] for c in inst["classes"]] if "classes" in inst else [inst["r"]]
    total, seconds, status = 0.0, 0.0, "ok"
    for r in residuals:
        fun, took, message = solve(x, np.asarray(r, dtype=np.float64), bias)
        seconds += took
        if fun is None:
            print(json.dumps({"objective": None, "status": message, "seconds": seconds}))
            return 1
        total += fun
        status = message
    print(json.dumps({"objective": total, "status": status, "seconds": seconds, "classes": len(residuals)}))
    return 0


def solve(x, r, bias):
    """One class's program: (objective or None, seconds, HiGHS's message)."""
    s, d = x.shape
    xs = csr_matrix(x)
    ones = csr_matrix(np.ones((s, 1)))
    blocks_up = [xs, -xs] + ([ones, -ones] if bias else []) + [-identity(s, format="csr")]
    blocks_down = [-xs, xs] + ([-ones, ones] if bias else []) + [-identity(s, format="csr")]
    a = vstack([hstack(blocks_up), hstack(blocks_down)]).tocsr()
    b = np.concatenate([r, -r])
    c = np.concatenate([np.ones(2 * d), np.zeros(2 if bias else 0), np.ones(s)])
    t0 = time.perf_counter()
    res = linprog(c, A_ub=a, b_ub=b, bounds=(0, None), method="highs")
    seconds = time.perf_counter() - t0
    return (float(res.fun) if res.success else None), seconds, res.message


def solve_margin(inst):
    """The margin program, with every constraint (no generation):
        minimise  sum |gamma| + sum_s price_s xi_s
        subject to  (gamma_t - gamma_k) . x_s + xi_s >= margin_s - (z_st - z_sk)  for k != t_s
    over gamma [K, d] (free, as gamma+ - gamma-) and xi >= 0."""
    x = np.asarray(inst["x"], dtype=np.float64)
    z = np.asarray(inst["scores"], dtype=np.float64)
    labels = np.asarray(inst["labels"], dtype=np.int64)
    margin = np.asarray(inst["margin"], dtype=np.float64)
    price = np.asarray(inst["price"], dtype=np.float64)
    n, d = x.shape
    k = z.shape[1]
    rows, cols, vals, b = [], [], [], []
    r = 0
    for s in range(n):
        t = labels[s]
        for c in range(k):
            if c == t:
                continue
            # -(gamma_t - gamma_c) . x_s - xi_s <= -(need)
            for j in np.nonzero(x[s])[0]:
                for block, sign in ((t, -1.0), (c, 1.0)):
                    rows += [r, r]
                    cols += [block * d + j, k * d + block * d + j]
                    vals += [sign * x[s, j], -sign * x[s, j]]
            rows.append(r)
            cols.append(2 * k * d + s)
            vals.append(-1.0)
            b.append(-(margin[s] - (z[s, t] - z[s, c])))
            r += 1
    a = csr_matrix((vals, (rows, cols)), shape=(r, 2 * k * d + n))
    c = np.concatenate([np.ones(2 * k * d), price])
    t0 = time.perf_counter()
    res = linprog(c, A_ub=a, b_ub=np.asarray(b), bounds=(0, None), method="highs")
    took = time.perf_counter() - t0
    return (float(res.fun) if res.success else None), took, res.message


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

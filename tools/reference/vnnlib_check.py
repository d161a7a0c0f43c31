#!/usr/bin/env python3
"""Reads the VNN-LIB properties `nnmend certify --vnnlib DIR` writes and checks them.

A small reader of the VNN-LIB subset the VNN-COMP benchmarks use (written from the
format description at vnnlib.org): s-expressions, `(declare-const NAME Real)`,
`(assert (<= A B))` / `(assert (>= A B))` with a variable and a number, and one
`(assert (or (and ...) ...))` over output comparisons. For each property it checks:

- the inputs X_0 .. X_{n-1} are declared and each bounded once above and once below;
- the box is [max(x - eps, 0), min(x + eps, 1)] for the image's pixels x (float32,
  in the model's layout, flattened), rounded outward to float32: the exact ends lie in
  it, and it is at most one float32 step wider on either side;
- the disjunction is exactly "Y_j >= Y_y" for every j != y, one per conjunct;
- DIR/model.onnx in onnxruntime, fed the pixels, scores like the hybrid fed
  (x - mean) / std.

Usage: vnnlib_check.py DIR HYBRID.onnx X.npy Y.npy EPS[,EPS...] [--mean M ...] [--std S ...]
Prints a JSON summary; exits 1 on the first failed check.
"""

import argparse
import json
import os
import sys

import numpy as np
import onnxruntime as ort


def tokens(text):
    out = []
    for line in text.splitlines():
        line = line.split(";", 1)[0]
        out.extend(line.replace("(", " ( ").replace(")", " ) ").split())
    return out


def parse(toks):
    stack = [[]]
    for t in toks:
        if t == "(":
            stack.append([])
        elif t == ")":
            done = stack.pop()
            stack[-1].append(done)
        else:
            stack[-1].append(t)
    if len(stack) != 1:
        raise ValueError("unbalanced parentheses")
    return stack[0]


def fail(msg):
    print(msg, file=sys.stderr)
    sys.exit(1)


def check_property(path, x, label, classes, eps):
    forms = parse(tokens(open(path).read()))
    declared = {f[1] for f in forms if f[0] == "declare-const" and f[2] == "Real"}
    lo, hi, disjunction = {}, {}, None
    for f in forms:
        if f[0] != "assert":
            continue
        body = f[1]
        if body[0] in ("<=", ">=") and isinstance(body[1], str):
            var, num = body[1], float(body[2])
            (hi if body[0] == "<=" else lo)[var] = num
        elif body[0] == "or":
            disjunction = body[1:]
    n = x.size
    for i in range(n):
        if f"X_{i}" not in declared or f"X_{i}" not in lo or f"X_{i}" not in hi:
            fail(f"{path}: X_{i} undeclared or unbounded")
    for j in range(classes):
        if f"Y_{j}" not in declared:
            fail(f"{path}: Y_{j} undeclared")
    xs = x.reshape(-1).astype(np.float64)
    exact_lo = np.maximum(xs - np.float64(np.float32(eps)), 0.0)
    exact_hi = np.minimum(xs + np.float64(np.float32(eps)), 1.0)
    got_lo = np.array([lo[f"X_{i}"] for i in range(n)])
    got_hi = np.array([hi[f"X_{i}"] for i in range(n)])
    if np.any(got_lo > exact_lo) or np.any(got_hi < exact_hi):
        fail(f"{path}: the box does not contain the ball")
    if np.any(got_lo.astype(np.float32).astype(np.float64) != got_lo) or np.any(
        got_hi.astype(np.float32).astype(np.float64) != got_hi
    ):
        fail(f"{path}: a bound is not a float32")
    step_lo = np.abs(np.nextafter(exact_lo.astype(np.float32), np.float32(-1)) - exact_lo)
    step_hi = np.abs(np.nextafter(exact_hi.astype(np.float32), np.float32(2)) - exact_hi)
    if np.any(exact_lo - got_lo > step_lo) or np.any(got_hi - exact_hi > step_hi):
        fail(f"{path}: the box is wider than the ball rounded outward")
    want = sorted(f"Y_{j}" for j in range(classes) if j != label)
    got = []
    for conj in disjunction or []:
        if conj[0] != "and" or len(conj) != 2 or conj[1][0] != ">=" or conj[1][2] != f"Y_{label}":
            fail(f"{path}: unexpected disjunct {conj}")
        got.append(conj[1][1])
    if sorted(got) != want:
        fail(f"{path}: the disjunction is over {got}, not {want}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("hybrid")
    p.add_argument("x")
    p.add_argument("y")
    p.add_argument("eps")
    p.add_argument("--mean", type=float, nargs="*", default=[])
    p.add_argument("--std", type=float, nargs="*", default=[])
    a = p.parse_args()
    x = np.load(a.x).astype(np.float32)
    y = np.load(a.y).astype(np.int64)
    eps_list = [float(e) for e in a.eps.split(",")]
    written = ort.InferenceSession(os.path.join(a.dir, "model.onnx"))
    hybrid = ort.InferenceSession(a.hybrid)
    classes = written.get_outputs()[0].shape[1]
    shape = [1, -1] + [1] * (x.ndim - 2)
    mean = np.array(a.mean or [0.0], dtype=np.float32).reshape(shape)
    std = np.array(a.std or [1.0], dtype=np.float32).reshape(shape)
    z_written = written.run(None, {written.get_inputs()[0].name: x})[0]
    z_hybrid = hybrid.run(None, {hybrid.get_inputs()[0].name: (x - mean) / std})[0]
    if np.max(np.abs(z_written - z_hybrid)) > 1e-4 * max(1.0, np.max(np.abs(z_hybrid))):
        fail("model.onnx does not score like the hybrid with the normalisation")
    checked = 0
    for i in range(len(y)):
        for e in eps_list:
            path = os.path.join(a.dir, f"image{i}_eps{str(np.float32(e))}.vnnlib")
            if not os.path.exists(path):
                fail(f"{path} is missing")
            check_property(path, x[i], int(y[i]), classes, e)
            checked += 1
    print(json.dumps({"checked": checked, "classes": classes}))


if __name__ == "__main__":
    main()

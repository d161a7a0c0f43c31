#!/usr/bin/env python3
"""Interval bound propagation in float64, from the definitions, for the tests.

Reads an ONNX model with the `onnx` package and bounds one of its tensors over the
L-infinity balls {x' : |x' - x|_inf <= eps, 0 <= x' <= 1} around a batch of inputs.
Each op is evaluated by onnx's own reference implementation (onnx.reference, numpy)
on float64 arrays; the interval rules are those of IBP (Gowal et al., 2018):

- Conv, Gemm, MatMul with a constant weight W, on centre c and radius r:
  c' = op(c, W, b), r' = op(r, |W|) without the bias;
- ops non-decreasing in every input (Relu, LeakyRelu with alpha >= 0, the poolings,
  Exp, Sigmoid, Tanh, Add, Clip, and the ops that move or select values): the op on
  the lower ends and on the upper ends;
- Sub: [l1 - u2, u1 - l2]; Neg: [-u, -l];
- Mul, Div by a constant, BatchNormalization: the hull of the op at the corners
  (BatchNormalization written out here from its definition: onnx 1.23's reference
  evaluator disagrees with onnxruntime on it);
  x * x: [max(l, -u, 0)^2, max(l^2, u^2)].

No rounding margin: float64 is some 9 decimal digits finer than the float32 the
engines compute in, so these bounds are the exact ones to the precision the tests
compare at.

Usage:
    ibp_reference.py MODEL X.npy EPS OUT_DIR [--tensor NAME] [--mean M ...] [--std S ...]
                     [--labels Y.npy]
    ibp_reference.py --jobs JOBS.json

X.npy holds float32 inputs in [0, 1] in the model's own layout; --mean/--std (per
channel, axis 1) are applied inside, as the feed does. OUT_DIR gets `value.npy` (the
tensor at x), `lower.npy` and `upper.npy`, each float64 [n, D]. JOBS.json lists several
such runs as objects with the keys model, x, eps, out and optionally tensor, mean, std
and labels. With labels (and a tensor read
by a Gemm that computes the scores, as in a hybrid written by `nnmend fit`), it also
writes `certified.npy` (float64, 1 or 0): classified right, and the worst margin over the box, for every other
class j, sum_i min(d_i l_i, d_i u_i) + b_y - b_j with d = w_y - w_j, is positive.
"""

import argparse
import json
import os
import sys

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

MONOTONE = {
    "Identity", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Pad",
    "Slice", "Split", "Gather", "Expand", "Tile", "MaxPool", "GlobalMaxPool", "ReduceMax",
    "ReduceMin", "Relu", "Clip", "Max", "Min", "Exp", "Sigmoid", "Tanh", "Add", "AveragePool",
    "GlobalAveragePool", "ReduceMean", "ReduceSum", "Dropout", "LeakyRelu",
}
SHAPE_ONLY = {"Shape", "Size"}


class Interval:
    def __init__(self, lo, hi):
        self.lo = lo
        self.hi = hi


def f64(a):
    a = np.asarray(a)
    return a.astype(np.float64) if a.dtype.kind == "f" else a


def attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


class Propagator:
    def __init__(self, model):
        self.model = model
        self.opset = next(
            (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13
        )
        self.values = {}
        self.producers = {o: n for n in model.graph.node for o in n.output}
        for t in model.graph.initializer:
            self.values[t.name] = f64(numpy_helper.to_array(t))

    def run_node(self, node, feeds, outputs=None):
        """Runs one node on the given inputs (name -> array), in float64."""
        n = onnx.NodeProto()
        n.CopyFrom(node)
        if outputs is not None:
            del n.output[:]
            n.output.extend(outputs)
        names = [i for i in n.input if i]
        # A one-node model, so that the op's version is the model's opset.
        graph = onnx.helper.make_graph(
            [n], "step",
            [onnx.ValueInfoProto(name=i) for i in dict.fromkeys(names)],
            [onnx.ValueInfoProto(name=o) for o in n.output if o],
        )
        one = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", self.opset)])
        ev = ReferenceEvaluator(one)
        res = ev.run(None, {k: feeds[k] for k in names})
        return [f64(r) for r in res]

    def point(self, name):
        return self.values[name]

    def ends(self, name, which):
        v = self.values.get(name)
        if isinstance(v, Interval):
            return v.lo if which == 0 else v.hi
        return v

    def on_ends(self, node, which):
        feeds = {i: self.ends(i, which) for i in node.input if i}
        outs = [o for o in node.output]
        if node.op_type in ("Dropout", "MaxPool"):
            outs = outs[:1]
        return self.run_node(node, feeds, outs)

    def producer(self, name):
        return self.producers.get(name)

    def squared_distances(self, node):
        """The exact box of a Nystrom map's d2 = |f|^2 - 2 f.L^T + |L|^2, written as
        Add(Add(MatMul(Mul(f, f), ones), Mul(MatMul(f, Lt), -2)), norms): per
        landmark, the sum over coordinates of the squared distance from L_ji to
        [l_i, u_i] (lower) and to its farther end (upper). None when `node` is not
        that Add."""
        def made(name, op):
            n = self.producer(name)
            return n if n is not None and n.op_type == op else None

        if node.op_type != "Add" or isinstance(self.values.get(node.input[1]), Interval):
            return None
        partial = made(node.input[0], "Add")
        if partial is None:
            return None
        sq, cross2 = made(partial.input[0], "MatMul"), made(partial.input[1], "Mul")
        if sq is None or cross2 is None:
            return None
        f2, cross = made(sq.input[0], "Mul"), made(cross2.input[0], "MatMul")
        if f2 is None or cross is None or f2.input[0] != f2.input[1] or cross.input[0] != f2.input[0]:
            return None
        f = self.values.get(f2.input[0])
        lt = self.values.get(cross.input[1])
        if not isinstance(f, Interval) or isinstance(lt, Interval) or lt is None:
            return None
        if not np.all(self.values[cross2.input[1]] == -2.0) or not np.all(self.values[sq.input[1]] == 1.0):
            return None
        a = f.lo[:, :, None] - lt[None, :, :]
        b = f.hi[:, :, None] - lt[None, :, :]
        near = np.maximum(a, 0.0) ** 2 + np.maximum(-b, 0.0) ** 2
        far = np.maximum(a * a, b * b)
        return Interval(near.sum(axis=1), far.sum(axis=1))

    def step(self, node):
        op = node.op_type
        tight = self.squared_distances(node)
        if tight is not None:
            self.values[node.output[0]] = tight
            return
        ins = [i for i in node.input if i]
        active = [isinstance(self.values.get(i), Interval) for i in node.input]
        if not any(active):
            feeds = {i: self.values[i] for i in ins}
            for o, v in zip(node.output, self.run_node(node, feeds)):
                self.values[o] = v
            return
        if op in SHAPE_ONLY:
            feeds = {i: self.ends(i, 0) for i in ins}
            self.values[node.output[0]] = self.run_node(node, feeds)[0]
            return
        if op == "Cast":
            self.values[node.output[0]] = self.values[node.input[0]]
            return
        if op == "LeakyRelu" and attr(node, "alpha", 0.01) < 0:
            raise SystemExit(f"node {node.name}: LeakyRelu with a negative slope")
        if op in MONOTONE:
            lo = self.on_ends(node, 0)
            hi = self.on_ends(node, 1)
            for o, a, b in zip(node.output, lo, hi):
                self.values[o] = Interval(a, b)
            return
        out = node.output[0]
        if op == "Neg":
            x = self.values[node.input[0]]
            self.values[out] = Interval(-x.hi, -x.lo)
        elif op == "Sub":
            a = [self.ends(node.input[0], w) for w in (0, 1)]
            b = [self.ends(node.input[1], w) for w in (0, 1)]
            self.values[out] = Interval(a[0] - b[1], a[1] - b[0])
        elif op == "Mul" and node.input[0] == node.input[1]:
            x = self.values[node.input[0]]
            m = np.maximum(np.maximum(x.lo, -x.hi), 0.0)
            self.values[out] = Interval(m * m, np.maximum(x.lo * x.lo, x.hi * x.hi))
        elif op in ("Mul", "Div"):
            if op == "Div" and active[1]:
                raise SystemExit(f"node {node.name}: Div by a bounded divisor")
            a = [self.ends(node.input[0], w) for w in (0, 1)]
            b = [self.ends(node.input[1], w) for w in (0, 1)]
            corners = [x * y if op == "Mul" else x / y for x in a for y in b]
            self.values[out] = Interval(np.minimum.reduce(corners), np.maximum.reduce(corners))
        elif op == "BatchNormalization":
            if attr(node, "training_mode", 0):
                raise SystemExit(f"node {node.name}: BatchNormalization in training mode")
            lo = self.on_ends_first(node, 0)
            hi = self.on_ends_first(node, 1)
            self.values[out] = Interval(np.minimum(lo, hi), np.maximum(lo, hi))
        elif op in ("Conv", "Gemm", "MatMul"):
            self.linear(node, active)
        else:
            raise SystemExit(f"node {node.name}: no interval rule for {op}")

    def on_ends_first(self, node, which):
        """BatchNormalization in inference form, from its definition
        y = scale (x - mean) / sqrt(var + epsilon) + B, per channel (axis 1)."""
        x = self.ends(node.input[0], which)
        shape = [1, -1] + [1] * (x.ndim - 2)
        scale, bias, mean, var = (self.values[i].reshape(shape) for i in node.input[1:5])
        eps = attr(node, "epsilon", 1e-5)
        return scale * (x - mean) / np.sqrt(var + eps) + bias

    def linear(self, node, active):
        op = node.op_type
        data = 1 if op == "MatMul" and not active[0] else 0
        weight = 1 - data if op == "MatMul" else 1
        if active[weight] or (len(active) > 2 and active[2]):
            raise SystemExit(f"node {node.name}: {op} with a bounded weight")
        x = self.values[node.input[data]]
        c = (x.lo + x.hi) / 2.0
        r = (x.hi - x.lo) / 2.0
        feeds = {i: self.values[i] for i in node.input if i and i != node.input[data]}
        feeds[node.input[data]] = c
        centre = self.run_node(node, feeds)[0]
        w = np.abs(self.values[node.input[weight]])
        rn = onnx.NodeProto()
        rn.CopyFrom(node)
        del rn.input[:]
        wname = "__abs_w"
        rn.input.extend([node.input[data], wname] if data == 0 else [wname, node.input[data]])
        del rn.attribute[:]
        for a in node.attribute:
            if a.name == "alpha":
                rn.attribute.append(onnx.helper.make_attribute("alpha", abs(a.f)))
            elif a.name != "beta":
                rn.attribute.append(a)
        radius = self.run_node(rn, {node.input[data]: r, wname: w})[0]
        self.values[node.output[0]] = Interval(centre - radius, centre + radius)

    def propagate(self, x, eps, mean, std, tensor):
        graph = self.model.graph
        inits = {t.name for t in graph.initializer}
        inp = next(i.name for i in graph.input if i.name not in inits)
        lo = np.maximum(x - eps, 0.0)
        hi = np.minimum(x + eps, 1.0)
        if mean is not None:
            shape = [1, -1] + [1] * (x.ndim - 2)
            m = np.asarray(mean, dtype=np.float64).reshape(shape)
            s = np.asarray(std, dtype=np.float64).reshape(shape)
            lo, hi = (lo - m) / s, (hi - m) / s
        self.values[inp] = Interval(lo, hi)
        for node in graph.node:
            self.step(node)
            if tensor in node.output:
                break
        v = self.values[tensor]
        if not isinstance(v, Interval):
            raise SystemExit(f"tensor {tensor} does not depend on the input")
        n = x.shape[0]
        return v.lo.reshape(n, -1), v.hi.reshape(n, -1)


def head_of(model, tensor):
    """W [k, D] and b [k] of the Gemm(tensor, W, b, transB=1) reading `tensor`."""
    inits = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Gemm" and node.input[0] == tensor:
            w = inits[node.input[1]]
            if attr(node, "transB", 0) == 0:
                w = w.T
            return w, inits[node.input[2]]
    raise SystemExit(f"no Gemm reads {tensor}")


def job(model_path, x_path, eps, out, tensor=None, mean=None, std=None, labels=None):
    model = onnx.load(model_path)
    tensor = tensor or model.graph.output[0].name
    x = np.load(x_path).astype(np.float64)
    mean, std = mean or None, std or None
    if mean and not std:
        std = [1.0] * len(mean)
    if std and not mean:
        mean = [0.0] * len(std)
    value, _ = Propagator(model).propagate(x, 0.0, mean, std, tensor)
    lower, upper = Propagator(model).propagate(x, eps, mean, std, tensor)
    os.makedirs(out, exist_ok=True)
    np.save(os.path.join(out, "value.npy"), value)
    np.save(os.path.join(out, "lower.npy"), lower)
    np.save(os.path.join(out, "upper.npy"), upper)
    if labels:
        y = np.load(labels).astype(np.int64)
        w, b = head_of(model, tensor)
        scores = value @ w.T + b
        certified = np.zeros(len(y))
        for i, label in enumerate(y):
            if np.argmax(scores[i]) != label:
                continue
            worst = min(
                np.minimum((w[label] - w[j]) * lower[i], (w[label] - w[j]) * upper[i]).sum() + b[label] - b[j]
                for j in range(w.shape[0])
                if j != label
            )
            certified[i] = float(worst > 0)
        np.save(os.path.join(out, "certified.npy"), certified)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", nargs="?")
    p.add_argument("x", nargs="?")
    p.add_argument("eps", type=float, nargs="?")
    p.add_argument("out", nargs="?")
    p.add_argument("--tensor")
    p.add_argument("--mean", type=float, nargs="*")
    p.add_argument("--std", type=float, nargs="*")
    p.add_argument("--labels")
    p.add_argument("--jobs")
    a = p.parse_args()
    if a.jobs:
        with open(a.jobs) as f:
            for j in json.load(f):
                job(j["model"], j["x"], j["eps"], j["out"], j.get("tensor"), j.get("mean"), j.get("std"), j.get("labels"))
        return 0
    if a.out is None:
        p.error("give MODEL X.npy EPS OUT_DIR, or --jobs")
    job(a.model, a.x, a.eps, a.out, a.tensor, a.mean, a.std, a.labels)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Linear (CROWN-IBP) bounds on a linear hybrid's margins, in float64, for the tests.

For a hybrid written by `nnmend fit` (an extractor that is a chain of Conv, Gemm,
Flatten, Relu and MaxPool nodes, then the head Gemm), it bounds, for each image x
and each class j other than the label y, the margin z_y - z_j over the ball
{x' : |x' - x|_inf <= eps, 0 <= x' <= 1}, and prints per image the worst over j of
max(linear bound, interval bound). Every linear node is taken as an explicit matrix:
onnx's reference evaluator runs it on the unit vectors (and on zero, for the bias),
so no convolution is written here. A MaxPool's windows are read off the same way.

- Interval bounds of every tensor: centre c and radius r through a linear node,
  c' = J c + b, r' = |J| r; Relu and MaxPool on the lower and on the upper ends.
- Back-substitution of lambda = w_y - w_j from the features to the pixels, for a
  lower bound of lambda . f:
  linear node: lambda <- J^T lambda, constant += lambda . b;
  Relu on [l, u] with l < 0 < u: where lambda >= 0, relu(z) >= a z with a = 1 if
  u > -l (by more than TIE of u - l) else 0; where lambda < 0, relu(z) <= u (z - l) / (u - l);
  MaxPool: where lambda >= 0, max >= the window's input k with the largest lower
  bound (the first within TIE of it); where lambda < 0, max = x_k when l_k >= u_i for every other input i of
  the window, else max <= the largest upper bound of the window;
  at the pixels: constant + sum of min(lambda lo, lambda hi).
- Interval bound of the margin: sum_i min(d_i l_i, d_i u_i) + b_y - b_j.
- With --refine (CROWN rather than CROWN-IBP): the box of each linear node that feeds a
  Relu, after an earlier Relu or MaxPool, is tightened where it straddles zero: each
  such neuron's lower bound is the back-substitution of its unit vector, its upper
  bound minus that of the negated unit vector (kept inside the interval box); and so
  is every feature's box, which the interval bound of the margin then reads.

No rounding allowance: these are exact-arithmetic bounds.

Usage:
    crown_reference.py MODEL X.npy Y.npy EPS OUT.npy [--mean M] [--std S] [--refine]
X.npy: float32 [n, C, H, W] in [0, 1]; Y.npy: int64 labels. --mean/--std (one value
for every channel) are applied first, as the feed does. OUT.npy: float64 [n].
"""

import argparse

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator


# Values closer than this, relatively, are equal when a relaxation is chosen: the
# first of equal lower bounds in a window; alpha = 0 when u = -l.
TIE = 1e-9


def run_node(model, node, x):
    """The node on a batch x (float64), its other inputs the model's initializers."""
    inits = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    n = onnx.NodeProto()
    n.CopyFrom(node)
    del n.output[1:]
    names = list(dict.fromkeys(i for i in n.input if i))
    graph = onnx.helper.make_graph(
        [n], "one", [onnx.ValueInfoProto(name=i) for i in names], [onnx.ValueInfoProto(name=n.output[0])]
    )
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    one = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    feeds = {i: (x if i == node.input[0] else inits[i]) for i in names}
    return np.asarray(ReferenceEvaluator(one).run(None, feeds)[0], dtype=np.float64)


def layers(model, in_shape):
    """The chain up to the head Gemm as (kind, data) pairs, and the head (W, b)."""
    nodes = list(model.graph.node)
    head = nodes[-1]
    assert head.op_type == "Gemm", head.op_type
    inits = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    w, b = inits[head.input[1]], inits[head.input[2]]
    trans = any(a.name == "transB" and a.i == 1 for a in head.attribute)
    w = w if trans else w.T
    out, shape = [], tuple(in_shape)
    for node in nodes[:-1]:
        size = int(np.prod(shape))
        basis = np.eye(size).reshape((size,) + shape)
        if node.op_type == "Relu":
            out.append(("relu", None))
            continue
        if node.op_type == "MaxPool":
            # Unit vectors through the pooling: output o is 1 where input i is in its window.
            m = run_node(model, node, basis).reshape(size, -1)
            windows = [np.nonzero(m[:, o] > 0.5)[0] for o in range(m.shape[1])]
            out.append(("maxpool", windows))
            shape = run_node(model, node, basis[:1]).shape[1:]
            continue
        assert node.op_type in ("Conv", "Gemm", "Flatten"), node.op_type
        zero = run_node(model, node, np.zeros((1,) + shape))
        bias = zero.reshape(-1)
        jac = (run_node(model, node, basis).reshape(size, -1) - bias).T
        out.append(("linear", (jac, bias)))
        shape = zero.shape[1:]
    return out, (w, b)


def substitute(chain, boxes, last, lam):
    """A lower bound of lam . y over the ball, y the output of chain[last], by
    back-substitution through chain[last] down to chain[0] (boxes[t]: the input box of
    chain[t])."""
    const = 0.0
    for t in range(last, -1, -1):
        kind, data = chain[t]
        l, u = boxes[t]
        if kind == "linear":
            jac, bias = data
            const += lam @ bias
            lam = jac.T @ lam
        elif kind == "relu":
            new = np.where(l >= 0, lam, 0.0)
            cross = (l < 0) & (u > 0)
            s = np.where(cross, u / np.where(cross, u - l, 1.0), 0.0)
            up = cross & (lam < 0)
            new = np.where(cross & (lam >= 0), np.where(u + l > TIE * (u - l), lam, 0.0), new)
            new = np.where(up, lam * s, new)
            const += np.sum(np.where(up, -lam * s * l, 0.0))
            lam = new
        else:
            new = np.zeros(len(l))
            for o in np.nonzero(lam)[0]:
                wi = data[o]
                top = l[wi].max()
                k = wi[np.nonzero(l[wi] >= top - TIE * abs(top))[0][0]]
                dominant = all(i == k or u[i] <= l[k] for i in wi)
                if lam[o] > 0 or dominant:
                    new[k] += lam[o]
                else:
                    const += lam[o] * u[wi].max()
            lam = new
    lo, hi = boxes[0]
    # lam on the normalised inputs; the box is that of the normalised ball.
    return const + np.minimum(lam * lo, lam * hi).sum()


def worst_margins(model, x, y, eps, mean, std, refine=False):
    chain, (w, b) = layers(model, x.shape[1:])
    res = []
    for xi, yi in zip(x.astype(np.float64), y):
        lo = (np.clip(xi - eps, 0, 1).reshape(-1) - mean) / std
        hi = (np.clip(xi + eps, 0, 1).reshape(-1) - mean) / std
        boxes = [(lo, hi)]
        nonlinear = False
        for t, (kind, data) in enumerate(chain):
            l, u = boxes[-1]
            if kind == "linear":
                jac, bias = data
                c, r = jac @ ((l + u) / 2) + bias, np.abs(jac) @ ((u - l) / 2)
                nl, nu = c - r, c + r
                feeds_relu = t + 1 < len(chain) and chain[t + 1][0] == "relu"
                if refine and nonlinear and feeds_relu:
                    for k in np.nonzero((nl < 0) & (nu > 0))[0]:
                        unit = np.zeros(len(nl))
                        unit[k] = 1.0
                        nl[k] = max(nl[k], substitute(chain, boxes, t, unit))
                        nu[k] = min(nu[k], -substitute(chain, boxes, t, -unit))
                boxes.append((nl, nu))
            elif kind == "relu":
                nonlinear = True
                boxes.append((np.maximum(l, 0), np.maximum(u, 0)))
            else:
                nonlinear = True
                boxes.append((np.array([l[wi].max() for wi in data]), np.array([u[wi].max() for wi in data])))
        if refine and nonlinear:
            fl, fu = boxes[-1]
            for k in range(len(fl)):
                unit = np.zeros(len(fl))
                unit[k] = 1.0
                fl[k] = max(fl[k], substitute(chain, boxes[:-1], len(chain) - 1, unit))
                fu[k] = min(fu[k], -substitute(chain, boxes[:-1], len(chain) - 1, -unit))
        fl, fu = boxes[-1]
        worst = np.inf
        for j in range(w.shape[0]):
            if j == yi:
                continue
            d = w[yi] - w[j]
            interval = np.minimum(d * fl, d * fu).sum() + b[yi] - b[j]
            linear = b[yi] - b[j] + substitute(chain, boxes, len(chain) - 1, d)
            worst = min(worst, max(linear, interval))
        res.append(worst)
    return np.array(res)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("x")
    p.add_argument("y")
    p.add_argument("eps", type=float)
    p.add_argument("out")
    p.add_argument("--mean", type=float, default=0.0)
    p.add_argument("--std", type=float, default=1.0)
    p.add_argument("--refine", action="store_true", help="tighten the boxes in between by back-substitution (CROWN)")
    a = p.parse_args()
    model = onnx.load(a.model)
    x, y = np.load(a.x), np.load(a.y)
    np.save(a.out, worst_margins(model, x, y, a.eps, a.mean, a.std, a.refine))


if __name__ == "__main__":
    main()

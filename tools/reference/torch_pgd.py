"""PyTorch reference for nnmend's robust-accuracy protocol (attack::protocol) on MNIST-NN.

The protocol, as nnmend runs it: for each loss in (cross-entropy, margin) and each of
3 restarts, PGD with a uniformly random start in the L-inf ball of radius eps, 40 steps
of 2.5*eps/40 along the sign of the input gradient, projected onto the ball and onto
[0, 1]; an image stops at its first misclassified iterate (the random start included)
and counts as broken. It is robust when it is classified right clean and no run
breaks it. The random starts cannot be nnmend's own, so robust counts agree only up to
the attack's luck: the test allows a few images either way.

Losses (per image, ascended): cross-entropy logsumexp(z) - z[y]; margin
max_{k != y} z[k] - z[y] (Carlini-Wagner's).

Needs the Debian python `/usr/bin/python3` with PyTorch 1.13 (CPU), onnx and numpy.

Run from the project root:
    /usr/bin/python3 tools/reference/torch_pgd.py [-n 200] [--eps 0.1]

Reads fixtures/mnist_paper.onnx and the first N images of fixtures/mnist-small-test.npz;
writes fixtures/reference/pgd_mnist_paper.json (clean and robust counts per eps).
"""

import argparse
import json
import os
import sys

import numpy as np
import torch
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_reference import MODEL, MnistNN, load_onnx_weights  # noqa: E402

DATA = "fixtures/mnist-small-test.npz"
OUT = "fixtures/reference/pgd_mnist_paper.json"
STEPS, RESTARTS = 40, 3


def loss_of(z, y, kind):
    if kind == "ce":
        return F.cross_entropy(z, y, reduction="none")
    true = z.gather(1, y[:, None])[:, 0]
    others = z.masked_fill(F.one_hot(y, z.shape[1]).bool(), float("-inf"))
    return others.max(1).values - true


def pgd_breaks(model, x, y, eps, kind, generator):
    """[N] bool: whether any iterate of one PGD run is misclassified."""
    step = 2.5 * eps / STEPS
    adv = (x + (torch.rand(x.shape, generator=generator) * 2 - 1) * eps).clamp(0, 1)
    broken = torch.zeros(len(x), dtype=torch.bool)
    for i in range(STEPS + 1):
        adv = adv.detach().requires_grad_(True)
        z = model(adv)
        broken |= z.argmax(1) != y
        if i == STEPS:
            break
        (grad,) = torch.autograd.grad(loss_of(z, y, kind).sum(), adv)
        adv = torch.min(torch.max(adv + step * grad.sign(), x - eps), x + eps).clamp(0, 1)
    return broken.detach()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200)
    parser.add_argument("--eps", type=float, nargs="+", default=[0.1])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = MnistNN()
    load_onnx_weights(model, MODEL)
    model.eval()
    data = np.load(DATA)
    x = torch.from_numpy(data["x"][: args.n].astype(np.float32))
    y = torch.from_numpy(data["y"][: args.n].astype(np.int64))
    generator = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    results = []
    for eps in args.eps:
        broken = torch.zeros(len(x), dtype=torch.bool)
        for kind in ("ce", "margin"):
            for _ in range(RESTARTS):
                broken |= pgd_breaks(model, x, y, eps, kind, generator)
        robust = int((correct & ~broken).sum())
        results.append({"eps": eps, "robust_correct": robust, "robust_accuracy": robust / len(x)})
        print(f"eps {eps}: clean {int(correct.sum())}/{len(x)}, robust {robust}")
    report = {
        "model": MODEL,
        "data": f"{DATA}, first {args.n} images",
        "protocol": f"PGD-{STEPS}, step 2.5*eps/{STEPS}, random start, losses ce and margin, "
                    f"{RESTARTS} restarts each, early stop at the first misclassified iterate",
        "torch_version": torch.__version__,
        "n": args.n,
        "clean_correct": int(correct.sum()),
        "results": results,
    }
    with open(OUT, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

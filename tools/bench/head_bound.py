"""How robust can a head on MNIST-NN's frozen features become?

nnmend's repair changes only the head: the extractor (MNIST-NN up to its last pooling
layer, 800 features) stays as it is. This script trains heads of several sizes on those
frozen features against PGD, the extractor fixed, and measures each under nnmend's
robust-accuracy protocol (`attack::protocol`, as tools/reference/torch_pgd.py runs it:
cross-entropy and margin loss, 3 random restarts each, 40 steps of 2.5*eps/40, each
head attacked through the whole network). What the most flexible head reaches is an
empirical ceiling for any head nnmend could write on these features.

The split is the one of tools/bench/repair_defaults.py: heads are trained on a seeded
random pool of training images 0-49,999; clean accuracy on training images
50,000-59,999, robust accuracy on the first --val-limit of them. Test images are not read.

Heads:
    linear  800 -> 10 (as LH), from zero
    nn      800 -> 500 -> 10 (MNIST-NN's own head), from MNIST-NN's weights
    wide    800 -> 2048 -> 2048 -> 10, from a seeded random start

Training (per epoch, minibatches of 128 pool images): each minibatch is attacked
against the current head (PGD-7, random start, steps of 2.5*eps/7, cross-entropy), then
Adam takes one step on CE(attacked) + CE(clean).

Needs the Debian python `/usr/bin/python3` with PyTorch (python3-torch), onnx, numpy.
Run from the project root, e.g.
    /usr/bin/python3 tools/bench/head_bound.py --head nn --epochs 0 --head wide --pool 20000 --epochs 10
(each --head takes the --pool/--epochs/--lr given after it, or the defaults).
Appends one JSON line per head to --out.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

TOOLS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(TOOLS, folder) for folder in ("common", "train", "reference")]
from mnist_idx import load_split, to_nchw_float  # noqa: E402
from torch_pgd import pgd_breaks  # noqa: E402
from torch_reference import MODEL, load_onnx_weights  # noqa: E402
from train_mnist import MnistNN  # noqa: E402

FIT_LIMIT = 50_000
RESTARTS = 3


def make_head(kind, net, seed):
    torch.manual_seed(seed)
    if kind == "linear":
        head = nn.Sequential(nn.Flatten(), nn.Linear(800, 10))
        nn.init.zeros_(head[1].weight)
        nn.init.zeros_(head[1].bias)
    elif kind == "nn":
        head = nn.Sequential(nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10))
        head.load_state_dict(net.head.state_dict())
    elif kind == "wide":
        head = nn.Sequential(
            nn.Flatten(), nn.Linear(800, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 10)
        )
    else:
        raise SystemExit(f"unknown head {kind}")
    return head


def pgd_train(model, x, y, eps, steps, generator):
    step = 2.5 * eps / steps
    adv = (x + (torch.rand(x.shape, generator=generator) * 2 - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        adv = adv.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(adv), y), adv)
        adv = torch.min(torch.max(adv + step * grad.sign(), x - eps), x + eps).clamp(0, 1)
    return adv.detach()


def robust(model, x, y, eps, seed, batch=100):
    generator = torch.Generator().manual_seed(seed)
    robust_count = 0
    for s in range(0, len(x), batch):
        xb, yb = x[s : s + batch], y[s : s + batch]
        with torch.no_grad():
            ok = model(xb).argmax(1) == yb
        for kind in ("ce", "margin"):
            for _ in range(RESTARTS):
                ok &= ~pgd_breaks(model, xb, yb, eps, kind, generator)
        robust_count += int(ok.sum())
    return robust_count / len(x)


def accuracy(model, x, y, batch=1000):
    with torch.no_grad():
        return float(sum((model(x[s : s + batch]).argmax(1) == y[s : s + batch]).sum() for s in range(0, len(x), batch))) / len(x)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/datasets/mnist")
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--val-limit", type=int, default=300)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="target/head_bound.jsonl")
    p.add_argument("--head", action="append", default=[], help="linear, nn or wide; repeatable")
    p.add_argument("--pool", type=int, action="append", default=[])
    p.add_argument("--epochs", type=int, action="append", default=[])
    p.add_argument("--lr", type=float, action="append", default=[])
    p.add_argument("--train-steps", type=int, default=7)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    net = MnistNN()
    load_onnx_weights(net, MODEL)
    net.eval()
    for param in net.features.parameters():
        param.requires_grad_(False)

    images, labels = load_split("train", args.data)
    x_all = torch.from_numpy(to_nchw_float(images))
    y_all = torch.from_numpy(labels.astype(np.int64))
    x_val, y_val = x_all[FIT_LIMIT:], y_all[FIT_LIMIT:]

    def pick(values, i, default):
        return values[i] if i < len(values) else (values[-1] if values else default)

    for i, kind in enumerate(args.head or ["nn"]):
        pool, epochs, lr = pick(args.pool, i, 2000), pick(args.epochs, i, 10), pick(args.lr, i, 1e-3)
        head = make_head(kind, net, args.seed)
        model = nn.Sequential(net.features, head)
        rng = np.random.default_rng(args.seed)
        rows = torch.from_numpy(rng.permutation(FIT_LIMIT)[:pool])
        generator = torch.Generator().manual_seed(args.seed)
        optimiser = torch.optim.Adam(head.parameters(), lr=lr)
        started = time.time()
        for epoch in range(epochs):
            order = rows[torch.randperm(len(rows), generator=generator)]
            for s in range(0, len(order), 128):
                xb, yb = x_all[order[s : s + 128]], y_all[order[s : s + 128]]
                adv = pgd_train(model, xb, yb, args.eps, args.train_steps, generator)
                loss = F.cross_entropy(model(adv), yb) + F.cross_entropy(model(xb), yb)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
            print(f"{kind}: epoch {epoch + 1}/{epochs}, {time.time() - started:.0f} s", file=sys.stderr, flush=True)
        train_seconds = time.time() - started
        row = {
            "head": kind,
            "pool": pool,
            "epochs": epochs,
            "lr": lr,
            "eps": args.eps,
            "clean_val": accuracy(model, x_val, y_val),
            "robust_val": robust(model, x_val[: args.val_limit], y_val[: args.val_limit], args.eps, args.seed),
            "val_limit": args.val_limit,
            "train_seconds": round(train_seconds, 1),
            "torch": torch.__version__,
        }
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()

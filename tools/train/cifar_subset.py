"""Write a seeded random subset of the decoded CIFAR-10 JPEG images as .npz.

`tools/train/train_cifar.py` caches the decoded images of ../shared/datasets/cifar10-jpeg.tar.gz
in target/cifar-cache/{train,test}.npz (`x` uint8 [N,32,32,3] NHWC, `y` int64). The
image folders of that archive list their images class by class, so the first N images
are one or two classes only; this script takes N images at random (seeded), in random
order (so that `--limit M` on the result is a random subset too), which nnmend reads
like any other .npz.

`--network-split fit|validation` takes, instead of a random draw, the images that
`tools/train/train_cifar.py` (run with the same --seed, 0 by default) trained the
network on (45,000) or held out to choose its epoch (5,000), in the cache's order. The
held-out ones are images the network never learnt from, so a head's accuracy on them
reads like its accuracy on the test images; on images it was trained on it reads higher.

`--skip K` takes the N images after the first K of the same random order (a held-out
part disjoint from `--n K`); `--in-order` takes the first N in the cache's order
instead; `--mirror` appends each image's left-right mirror, with its label, after them;
`--crops K` then appends K shifted copies of every image so far: each a 32x32 crop of
the image zero-padded by 4 pixels at a seeded random offset, as the training
augmentation of `tools/train/train_cifar.py` crops.

Run from the project root (any python3 with numpy):
    python3 tools/train/cifar_subset.py --split train --n 10000 --seed 0
        -> target/cifar-cache/train_10k.npz
"""

import argparse
import os

import numpy as np

# The images tools/train/train_cifar.py holds out of the training set (the last ones of
# a permutation drawn with its seed); the same constant there.
VALIDATION = 5000


def crops(x, rng, pad=4):
    """A 32x32 crop of each image of `x` (NHWC) zero-padded by `pad`, at an offset
    drawn uniformly from 0..2*pad in each direction."""
    n, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    dy = rng.integers(0, 2 * pad + 1, n)
    dx = rng.integers(0, 2 * pad + 1, n)
    out = np.empty_like(x)
    for k in range(n):
        out[k] = padded[k, dy[k] : dy[k] + h, dx[k] : dx[k] + w]
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=["train", "test"], required=True)
    parser.add_argument("--n", type=int, help="how many images (all of them with --network-split)")
    parser.add_argument("--network-split", choices=["fit", "validation"],
                        help="the images train_cifar.py trained the network on, or held out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default="target/cifar-cache")
    parser.add_argument("--skip", type=int, default=0, help="skip the first K of the random order")
    parser.add_argument("--in-order", action="store_true", help="the first N in the cache's order")
    parser.add_argument("--mirror", action="store_true", help="append each image's left-right mirror")
    parser.add_argument("--crops", type=int, default=0, help="append K randomly shifted copies of each image")
    parser.add_argument("--out", help="default: CACHE/SPLIT_<n/1000>k.npz")
    args = parser.parse_args()
    data = np.load(os.path.join(args.cache, f"{args.split}.npz"))
    x, y = data["x"], data["y"]
    if args.network_split:
        if args.split != "train" or args.skip or args.in_order:
            parser.error("--network-split takes --split train, and neither --skip nor --in-order")
        # As tools/train/train_cifar.py splits (its VALIDATION, at --seed 0).
        order = np.random.default_rng(args.seed).permutation(len(y))
        held = np.sort(order[-VALIDATION:]) if args.network_split == "validation" else np.sort(order[:-VALIDATION])
        args.n = args.n or len(held)
        if args.n > len(held):
            parser.error(f"--network-split {args.network_split} has {len(held)} images; --n {args.n} asks for more")
    elif args.n is None:
        parser.error("--n N is needed without --network-split")
    if not 0 < args.n <= len(y) - args.skip or args.skip < 0:
        parser.error(f"--skip K and --n N must have 0 <= K and 0 < N <= {len(y)} - K")
    if args.network_split:
        rows = held[: args.n]
    elif args.in_order:
        rows = np.arange(args.skip, args.skip + args.n)
    else:
        rows = np.random.default_rng(args.seed).permutation(len(y))[args.skip : args.skip + args.n]
    xs, ys = x[rows], y[rows]
    if args.mirror:
        xs, ys = np.concatenate([xs, xs[:, :, ::-1, :]]), np.concatenate([ys, ys])
    if args.crops < 0:
        parser.error("--crops K needs K >= 0")
    rng = np.random.default_rng([args.seed, 1])
    copies = [xs]
    for _ in range(args.crops):
        copies.append(crops(xs, rng))
    xs, ys = np.concatenate(copies), np.tile(ys, args.crops + 1)
    default = f"network_{args.network_split}.npz" if args.network_split else f"{args.split}_{args.n // 1000}k.npz"
    out = args.out or os.path.join(args.cache, default)
    tmp = out + ".tmp.npz"
    np.savez(tmp, x=xs, y=ys)
    os.replace(tmp, out)
    print(f"{out}: {len(ys)} images, per class {np.bincount(ys, minlength=10).tolist()}")


if __name__ == "__main__":
    main()

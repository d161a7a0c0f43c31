"""Write a seeded random subset of the decoded CIFAR-10 JPEG images as .npz.

`tools/train/train_cifar.py` caches the decoded images of ../shared/datasets/cifar10-jpeg.tar.gz
in target/cifar-cache/{train,test}.npz (`x` uint8 [N,32,32,3] NHWC, `y` int64). The
image folders of that archive list their images class by class, so the first N images
are one or two classes only; this script takes N images at random (seeded), in random
order (so that `--limit M` on the result is a random subset too), which nnmend reads
like any other .npz.

Run from the project root (any python3 with numpy):
    python3 tools/train/cifar_subset.py --split train --n 10000 --seed 0
        -> target/cifar-cache/train_10k.npz
"""

import argparse
import os

import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=["train", "test"], required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default="target/cifar-cache")
    parser.add_argument("--out", help="default: CACHE/SPLIT_<n/1000>k.npz")
    args = parser.parse_args()
    data = np.load(os.path.join(args.cache, f"{args.split}.npz"))
    x, y = data["x"], data["y"]
    if not 0 < args.n <= len(y):
        parser.error(f"--n must be in 1..{len(y)}")
    rows = np.random.default_rng(args.seed).permutation(len(y))[: args.n]
    out = args.out or os.path.join(args.cache, f"{args.split}_{args.n // 1000}k.npz")
    tmp = out + ".tmp.npz"
    np.savez(tmp, x=x[rows], y=y[rows])
    os.replace(tmp, out)
    print(f"{out}: {args.n} images, per class {np.bincount(y[rows], minlength=10).tolist()}")


if __name__ == "__main__":
    main()

"""Train the MNIST-NN of Guidotti & Leofante (2020) and export it to ONNX.

Architecture (the seed paper's "MNIST-NN", a LeNet-style CNN):
    Conv 5x5, 20 kernels -> ReLU -> MaxPool 2 -> Conv 5x5, 50 kernels -> ReLU
    -> MaxPool 2 -> Flatten (800) -> Gemm 800->500 -> ReLU -> Gemm 500->10 (logits)
Input [N,1,28,28] float32, pixels / 255 in [0, 1], with NO mean/std
normalisation, so nnmend can run it with its default preprocessing.

Needs: the Debian python `/usr/bin/python3` with PyTorch 1.13 (CPU) and onnx 1.12
(packages `python3-torch`, `python3-onnx`, `python3-numpy`).

Run from the project root:
    /usr/bin/python3 tools/train/train_mnist.py [--epochs 3] [--seed 0]

Reads ../shared/datasets/mnist/*.gz (all 60,000 train and 10,000 test images).
Writes:
    fixtures/mnist_paper.onnx   (~1.7 MB, opset 11, input `input` [batch,1,28,28],
                                 output `logits` [batch,10], dynamic batch)
    fixtures/mnist_paper.json   (epochs, seed, test accuracy measured in PyTorch on
                                 all 10,000 test images, torch version, ...)
Deterministic: fixed seed, 2 threads, Adam, batch 64. The default 3 epochs reached 99.08%
(epoch 1: 98.38%, epoch 2: 98.68%) and used ~11.5 CPU-minutes, i.e. ~6 minutes on 2 idle
cores (23 minutes wall when the cores were shared with other builds).
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import onnx
import torch
from torch import nn
from torch.nn import functional as F

TOOLS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(TOOLS, folder) for folder in ("common",)]
from mnist_idx import load_split, to_nchw_float  # noqa: E402


class MnistNN(nn.Module):
    """The paper's MNIST-NN; `nn.Flatten` exports as a single ONNX Flatten node."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 20, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(20, 50, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(800, 500),
            nn.ReLU(),
            nn.Linear(500, 10),
        )

    def forward(self, x):
        return self.head(self.features(x))

    def forward_train(self, x):
        """The same function, with the two Linear layers run as convolutions.

        Debian's PyTorch links the reference BLAS, so `addmm` is slow, while
        convolutions go through oneDNN. Viewing the FC weights as 4x4 and 1x1
        kernels (C-order flatten of [50,4,4] is what nn.Flatten produces) makes
        an epoch about three times faster and trains the very same parameters.
        """
        fc1, fc2 = self.head[1], self.head[3]
        h = self.features(x)
        h = F.relu(F.conv2d(h, fc1.weight.view(500, 50, 4, 4), fc1.bias))
        return F.conv2d(h, fc2.weight.view(10, 500, 1, 1), fc2.bias).flatten(1)


def accuracy(model, x, y, batch=1000):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            correct += (model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum().item()
    return correct / len(x)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", default="fixtures/mnist_paper.onnx")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)

    train_images, train_labels = load_split("train")
    test_images, test_labels = load_split("test")
    x_train = torch.from_numpy(to_nchw_float(train_images))
    y_train = torch.from_numpy(train_labels.astype(np.int64))
    x_test = torch.from_numpy(to_nchw_float(test_images))
    y_test = torch.from_numpy(test_labels.astype(np.int64))

    model = MnistNN()
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(args.seed)
    start = time.time()
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        total = 0.0
        for i in range(0, len(order), args.batch):
            idx = order[i : i + args.batch]
            optimiser.zero_grad()
            loss = loss_fn(model.forward_train(x_train[idx]), y_train[idx])
            loss.backward()
            optimiser.step()
            total += loss.item() * len(idx)
        acc = accuracy(model, x_test, y_test)
        print(
            f"epoch {epoch}: train loss {total / len(x_train):.4f}, "
            f"test accuracy {acc:.4f} ({time.time() - start:.0f} s)",
            file=sys.stderr,
        )

    model.eval()
    with torch.no_grad():
        probe = x_test[:256]
        gap = (model(probe) - model.forward_train(probe)).abs().max().item()
    if gap > 1e-3:
        raise SystemExit(f"forward and forward_train disagree by {gap}")
    test_accuracy = accuracy(model, x_test, y_test)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    torch.onnx.export(
        model,
        torch.zeros(1, 1, 28, 28),
        args.out,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=11,
        do_constant_folding=True,
    )
    onnx.checker.check_model(onnx.load(args.out), full_check=True)

    info = {
        "model": os.path.basename(args.out),
        "architecture": "Conv5x5x20-ReLU-MaxPool2-Conv5x5x50-ReLU-MaxPool2-Flatten-FC800x500-ReLU-FC500x10",
        "input": {"name": "input", "shape": ["batch", 1, 28, 28], "preprocessing": "pixels/255, no mean/std"},
        "output": {"name": "logits", "shape": ["batch", 10]},
        "opset": 11,
        "epochs": args.epochs,
        "seed": args.seed,
        "batch": args.batch,
        "optimiser": f"Adam(lr={args.lr})",
        "test_images": len(x_test),
        "test_accuracy": test_accuracy,
        "torch_version": torch.__version__,
        "onnx_version": onnx.__version__,
    }
    json_path = os.path.splitext(args.out)[0] + ".json"
    with open(json_path, "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()

"""Train the CIFAR10-NN of Guidotti & Leofante (2020) and export it to ONNX.

Architecture (the seed paper's "CIFAR10-NN"):
    Conv3x3(pad 1) 32 -> ReLU -> Conv3x3 64 -> ReLU -> MaxPool 2
    -> Conv3x3 128 -> ReLU -> Conv3x3 128 -> ReLU -> MaxPool 2
    -> Conv3x3 256 -> ReLU -> Conv3x3 256 -> ReLU -> MaxPool 2
    -> Flatten (4096) -> FC 1024 -> ReLU -> FC 512 -> ReLU -> FC 10 (logits)
Input [N,3,32,32] float32, pixels / 255 in [0, 1], with NO mean/std normalisation,
so nnmend runs it with its default preprocessing. The last MaxPool is where nnmend
cuts it: 256 x 4 x 4 = 4,096 features, the paper's CIFAR-10 repair size.

Needs: the Debian python `/usr/bin/python3` with PyTorch 1.13 (CPU), onnx 1.12 and
PIL (packages `python3-torch`, `python3-onnx`, `python3-pil`).

Run from the project root:
    /usr/bin/python3 tools/train_cifar.py [--epochs 10] [--threads 2] [--seed 0]

Reads ../shared/datasets/cifar10-jpeg.tar.gz (50,000 train and 10,000 test JPEGs;
class index = alphabetical folder order). The decoded pixels are cached in
target/cifar-cache/ (~180 MB) so later runs skip the decoding.

Training on two CPU cores is slow (about 25 minutes per epoch here), so it is
resumable: after every epoch the state goes to target/models/cifar_paper.ckpt, and a
rerun with a larger --epochs continues from it. Each run ends by exporting
    target/models/cifar_paper.onnx  (~21 MB, opset 11, input `input` [batch,3,32,32],
                                     output `logits` [batch,10], dynamic batch)
    target/models/cifar_paper.json  (epochs done, test accuracy in PyTorch on all
                                     10,000 test images, per-epoch history, ...)
The model is kept out of git (over 5 MB); this command remakes it.
"""

import argparse
import io
import json
import os
import sys
import tarfile
import time

import numpy as np
import onnx
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class CifarNN(nn.Module):
    """The paper's CIFAR10-NN."""

    def __init__(self):
        super().__init__()
        layers = []
        channels = 3
        for i, width in enumerate([32, 64, 128, 128, 256, 256]):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
            if i % 2 == 1:
                layers.append(nn.MaxPool2d(2))
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(4096, 1024),
            nn.ReLU(),
            nn.Linear(1024, 512),
            nn.ReLU(),
            nn.Linear(512, 10),
        )

    def forward(self, x):
        return self.head(self.features(x))

    def forward_train(self, x):
        """The same function with the Linear layers run as convolutions: Debian's
        PyTorch links the reference BLAS, so `addmm` is slow, while convolutions go
        through oneDNN. Same parameters, same values (checked before export)."""
        fc1, fc2, fc3 = self.head[1], self.head[3], self.head[5]
        h = self.features(x)
        h = F.relu(F.conv2d(h, fc1.weight.view(1024, 256, 4, 4), fc1.bias))
        h = F.relu(F.conv2d(h, fc2.weight.view(512, 1024, 1, 1), fc2.bias))
        return F.conv2d(h, fc3.weight.view(10, 512, 1, 1), fc3.bias).flatten(1)


def load_split(archive, cache_dir, split):
    """(images uint8 [N,32,32,3], labels int64 [N]) of one split, decoded once."""
    cache = os.path.join(cache_dir, f"{split}.npz")
    if os.path.exists(cache):
        with np.load(cache) as z:
            return z["x"], z["y"]
    images, labels = [], []
    prefix = f"cifar10/{split}/"
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            if not member.isfile() or not member.name.startswith(prefix):
                continue
            parts = member.name[len(prefix) :].split("/")
            if len(parts) != 2 or parts[0] not in CLASSES:
                continue
            data = tar.extractfile(member).read()
            img = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.uint8)
            if img.shape != (32, 32, 3):
                raise SystemExit(f"{member.name}: expected 32x32 RGB, got {img.shape}")
            images.append(img)
            labels.append(CLASSES.index(parts[0]))
    x, y = np.stack(images), np.asarray(labels, dtype=np.int64)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = cache + ".tmp.npz"
    np.savez(tmp, x=x, y=y)
    os.replace(tmp, cache)
    return x, y


def to_tensor(x):
    return torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)


def accuracy(model, x, y, batch=500):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            correct += (model.forward_train(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum().item()
    return correct / len(x)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="total epochs (a rerun resumes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--archive", default="../shared/datasets/cifar10-jpeg.tar.gz")
    parser.add_argument("--cache", default="target/cifar-cache")
    parser.add_argument("--out", default="target/models/cifar_paper.onnx")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    started = time.time()
    train_x, train_y = load_split(args.archive, args.cache, "train")
    test_x, test_y = load_split(args.archive, args.cache, "test")
    print(f"data: {len(train_x)} train, {len(test_x)} test ({time.time() - started:.0f} s)", file=sys.stderr)
    x_train, y_train = to_tensor(train_x), torch.from_numpy(train_y)
    x_test, y_test = to_tensor(test_x), torch.from_numpy(test_y)

    model = CifarNN()
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed)
    history = []
    ckpt = os.path.splitext(args.out)[0] + ".ckpt"
    if os.path.exists(ckpt):
        state = torch.load(ckpt)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        generator.set_state(state["generator"])
        history = state["history"]
        print(f"resumed after epoch {len(history)}", file=sys.stderr)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(len(history) + 1, args.epochs + 1):
        t0 = time.time()
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        total = 0.0
        for i in range(0, len(order), args.batch):
            idx = order[i : i + args.batch]
            batch = x_train[idx]
            # The usual CIFAR augmentation: random horizontal flip.
            flip = torch.rand(len(idx), generator=generator) < 0.5
            batch[flip] = batch[flip].flip(3)
            optimiser.zero_grad()
            loss = loss_fn(model.forward_train(batch), y_train[idx])
            loss.backward()
            optimiser.step()
            total += loss.item() * len(idx)
            if (i // args.batch) % 100 == 0:
                print(f"  epoch {epoch}: {i}/{len(order)} loss {loss.item():.3f}", file=sys.stderr)
        acc = accuracy(model, x_test, y_test)
        history.append({"epoch": epoch, "train_loss": total / len(x_train), "test_accuracy": acc, "seconds": time.time() - t0})
        print(f"epoch {epoch}: {history[-1]}", file=sys.stderr)
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        state = {"model": model.state_dict(), "optimiser": optimiser.state_dict(), "generator": generator.get_state(), "history": history}
        torch.save(state, ckpt + ".tmp")
        os.replace(ckpt + ".tmp", ckpt)

    model.eval()
    with torch.no_grad():
        probe = x_test[:256]
        gap = (model(probe) - model.forward_train(probe)).abs().max().item()
    if gap > 1e-3:
        raise SystemExit(f"forward and forward_train disagree by {gap}")
    tmp = args.out + ".tmp.onnx"
    torch.onnx.export(
        model,
        torch.zeros(1, 3, 32, 32),
        tmp,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=11,
        do_constant_folding=True,
    )
    onnx.checker.check_model(onnx.load(tmp), full_check=True)
    os.replace(tmp, args.out)
    info = {
        "model": os.path.basename(args.out),
        "architecture": "(Conv3x3-ReLU)x2-MaxPool2 with 32,64 / 128,128 / 256,256 kernels, FC 4096-1024-512-10",
        "input": {"name": "input", "shape": ["batch", 3, 32, 32], "preprocessing": "pixels/255, no mean/std"},
        "output": {"name": "logits", "shape": ["batch", 10]},
        "data": "cifar10-jpeg.tar.gz (JPEG re-encoding of CIFAR-10), random horizontal flips",
        "epochs": len(history),
        "seed": args.seed,
        "batch": args.batch,
        "optimiser": f"Adam(lr={args.lr})",
        "test_images": len(x_test),
        "test_accuracy": history[-1]["test_accuracy"] if history else accuracy(model, x_test, y_test),
        "history": history,
        "torch_version": torch.__version__,
        "onnx_version": onnx.__version__,
    }
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()

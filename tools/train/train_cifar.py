"""Train the CIFAR10-NN of Guidotti & Leofante (2020) and export it to ONNX.

Architecture (the seed paper's "CIFAR10-NN"):
    Conv3x3(pad 1) 32 -> ReLU -> Conv3x3 64 -> ReLU -> MaxPool 2
    -> Conv3x3 128 -> ReLU -> Conv3x3 128 -> ReLU -> MaxPool 2
    -> Conv3x3 256 -> ReLU -> Conv3x3 256 -> ReLU -> MaxPool 2
    -> Flatten (4096) -> FC 1024 -> ReLU -> FC 512 -> ReLU -> FC 10 (logits)
Input [N,3,32,32] float32, pixels / 255 in [0, 1], with NO mean/std normalisation,
so nnmend runs it with its default preprocessing and ε stays in pixel space. The last
MaxPool is where nnmend cuts it: 256 x 4 x 4 = 4,096 features, the paper's CIFAR-10
repair size.

Recipe: SGD with Nesterov momentum 0.9 and weight decay 5e-4, batch 128, a learning
rate that rises linearly to --lr over the first 15% of the steps and then follows a
cosine to zero, random crops (4-pixel zero padding) and horizontal flips. Each
convolution is followed by batch normalisation while training only: at export the
normalisation is folded into the convolution's weights and bias, so the exported graph
is exactly the architecture above (Conv, Relu, MaxPool, Flatten, Gemm) and computes
the same function (checked before export). The last 5,000 images of a seeded
permutation of the training set are held out for validation; the exported weights are
those of the epoch with the best validation accuracy, and the test set is read once,
at the end, to report that model's accuracy.

Needs: the Debian python `/usr/bin/python3` with PyTorch 1.13 (CPU), onnx 1.12 and
PIL (packages `python3-torch`, `python3-onnx`, `python3-pil`).

Run from the project root:
    /usr/bin/python3 tools/train/train_cifar.py [--epochs 15] [--threads 2] [--seed 0]

Reads ../shared/datasets/cifar10-jpeg.tar.gz (50,000 train and 10,000 test JPEGs;
class index = alphabetical folder order). The decoded pixels are cached in
target/cifar-cache/ (~180 MB) so later runs skip the decoding.

Training on two CPU cores is slow (about 12 minutes per epoch on an idle machine), so
it is resumable: after every epoch the state goes to target/models/cifar_paper.ckpt,
and a rerun with the same --epochs continues from it (the schedule depends on the
total, so a different --epochs is refused). Each run ends by exporting
    OUT.onnx  (~23 MB, opset 11, input `input` [batch,3,32,32],
               output `logits` [batch,10], dynamic batch)
    OUT.json  (recipe, per-epoch history with validation accuracy, the chosen epoch,
               its test accuracy in PyTorch on all 10,000 test images, ...)
with OUT = --out without its extension (default target/models/cifar_paper).
"""

import argparse
import io
import json
import math
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
WIDTHS = [32, 64, 128, 128, 256, 256]
VALIDATION = 5000
WARMUP = 0.15


class CifarNN(nn.Module):
    """The paper's CIFAR10-NN; with `batch_norm`, each convolution is followed by a
    BatchNorm2d (training only: `folded()` returns the plain network)."""

    def __init__(self, batch_norm=False):
        super().__init__()
        layers = []
        channels = 3
        for i, width in enumerate(WIDTHS):
            layers.append(nn.Conv2d(channels, width, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU())
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

    def folded(self):
        """The plain CIFAR10-NN computing what this network computes in eval mode:
        each BatchNorm's affine map y = g (z - m) / sqrt(v + e) + b is folded into
        the convolution before it."""
        plain = CifarNN(batch_norm=False)
        convs = [m for m in self.features if isinstance(m, nn.Conv2d)]
        norms = [m for m in self.features if isinstance(m, nn.BatchNorm2d)]
        targets = [m for m in plain.features if isinstance(m, nn.Conv2d)]
        with torch.no_grad():
            for conv, norm, target in zip(convs, norms, targets):
                scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
                target.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
                target.bias.copy_((conv.bias - norm.running_mean) * scale + norm.bias)
            plain.head.load_state_dict(self.head.state_dict())
        return plain.eval()


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


def augment(images, generator):
    """Random 32x32 crops of the 4-pixel zero-padded images, and horizontal flips."""
    n = len(images)
    padded = F.pad(images, (4, 4, 4, 4))
    dx = torch.randint(0, 9, (n,), generator=generator)
    dy = torch.randint(0, 9, (n,), generator=generator)
    out = torch.empty_like(images)
    for k in range(n):
        out[k] = padded[k, :, dy[k] : dy[k] + 32, dx[k] : dx[k] + 32]
    flip = torch.rand(n, generator=generator) < 0.5
    out[flip] = out[flip].flip(3)
    return out


def learning_rate(step, total, peak):
    """Linear warm-up to `peak` over the first WARMUP of the steps, then a cosine to 0."""
    warm = max(1, int(WARMUP * total))
    if step < warm:
        return peak * (step + 1) / warm
    return 0.5 * peak * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15, help="total epochs of the schedule (a rerun resumes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.05, help="peak learning rate")
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--archive", default="../shared/datasets/cifar10-jpeg.tar.gz")
    parser.add_argument("--cache", default="target/cifar-cache")
    parser.add_argument("--out", default="target/models/cifar_paper.onnx")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    started = time.time()
    train_x, train_y = load_split(args.archive, args.cache, "train")
    print(f"data: {len(train_x)} training images ({time.time() - started:.0f} s)", file=sys.stderr)
    split = np.random.default_rng(args.seed).permutation(len(train_x))
    fit_idx, val_idx = np.sort(split[:-VALIDATION]), np.sort(split[-VALIDATION:])
    x_fit, y_fit = to_tensor(train_x[fit_idx]), torch.from_numpy(train_y[fit_idx])
    x_val, y_val = to_tensor(train_x[val_idx]), torch.from_numpy(train_y[val_idx])

    model = CifarNN(batch_norm=True)
    optimiser = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=args.weight_decay)
    generator = torch.Generator().manual_seed(args.seed)
    history, best = [], None
    steps_per_epoch = math.ceil(len(x_fit) / args.batch)
    total_steps = args.epochs * steps_per_epoch
    base, _ = os.path.splitext(args.out)
    ckpt = base + ".ckpt"
    if os.path.exists(ckpt):
        state = torch.load(ckpt)
        if state["epochs"] != args.epochs:
            raise SystemExit(f"{ckpt} follows a {state['epochs']}-epoch schedule; rerun with --epochs {state['epochs']} or remove it")
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        generator.set_state(state["generator"])
        history, best = state["history"], state["best"]
        print(f"resumed after epoch {len(history)}", file=sys.stderr)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(len(history) + 1, args.epochs + 1):
        t0 = time.time()
        model.train()
        order = torch.randperm(len(x_fit), generator=generator)
        total = 0.0
        for i in range(steps_per_epoch):
            idx = order[i * args.batch : (i + 1) * args.batch]
            for group in optimiser.param_groups:
                group["lr"] = learning_rate((epoch - 1) * steps_per_epoch + i, total_steps, args.lr)
            optimiser.zero_grad()
            loss = loss_fn(model.forward_train(augment(x_fit[idx], generator)), y_fit[idx])
            loss.backward()
            optimiser.step()
            total += loss.item() * len(idx)
            if i % 100 == 0:
                print(f"  epoch {epoch}: step {i}/{steps_per_epoch} loss {loss.item():.3f}", file=sys.stderr)
        val = accuracy(model, x_val, y_val)
        history.append({"epoch": epoch, "train_loss": total / len(x_fit), "validation_accuracy": val, "seconds": time.time() - t0})
        if best is None or val > best["validation_accuracy"]:
            best = {"epoch": epoch, "validation_accuracy": val, "model": {k: v.clone() for k, v in model.state_dict().items()}}
        print(f"epoch {epoch}: {history[-1]}", file=sys.stderr)
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        state = {"epochs": args.epochs, "model": model.state_dict(), "optimiser": optimiser.state_dict(), "generator": generator.get_state(), "history": history, "best": best}
        torch.save(state, ckpt + ".tmp")
        os.replace(ckpt + ".tmp", ckpt)

    model.load_state_dict(best["model"])
    model.eval()
    plain = model.folded()
    test_x, test_y = load_split(args.archive, args.cache, "test")
    x_test, y_test = to_tensor(test_x), torch.from_numpy(test_y)
    with torch.no_grad():
        probe = x_test[:256]
        gap = max((plain(probe) - model.forward_train(probe)).abs().max().item(), (plain.forward_train(probe) - plain(probe)).abs().max().item())
    if gap > 1e-3:
        raise SystemExit(f"the folded network and the trained one disagree by {gap}")
    test_accuracy = accuracy(plain, x_test, y_test)
    tmp = base + ".tmp.onnx"
    torch.onnx.export(
        plain,
        torch.zeros(1, 3, 32, 32),
        tmp,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=11,
        do_constant_folding=True,
    )
    onnx.checker.check_model(onnx.load(tmp), full_check=True)
    os.replace(tmp, base + ".onnx")
    info = {
        "model": os.path.basename(base + ".onnx"),
        "architecture": "(Conv3x3-ReLU)x2-MaxPool2 with 32,64 / 128,128 / 256,256 kernels, FC 4096-1024-512-10",
        "parameters": sum(p.numel() for p in plain.parameters()),
        "input": {"name": "input", "shape": ["batch", 3, 32, 32], "preprocessing": "pixels/255, no mean/std"},
        "output": {"name": "logits", "shape": ["batch", 10]},
        "data": "cifar10-jpeg.tar.gz (JPEG re-encoding of CIFAR-10): 45,000 training images, random 4-pixel crops and horizontal flips; 5,000 held out for validation",
        "recipe": {
            "optimiser": f"SGD(nesterov, momentum 0.9, weight_decay {args.weight_decay})",
            "batch": args.batch,
            "schedule": f"linear warm-up to {args.lr} over {WARMUP:.0%} of the steps, then cosine to 0",
            "epochs": args.epochs,
            "batch_norm": "after each convolution while training, folded into the convolutions at export",
            "seed": args.seed,
            "threads": args.threads,
        },
        "chosen_epoch": best["epoch"],
        "validation_accuracy": best["validation_accuracy"],
        "test_images": len(x_test),
        "test_accuracy": test_accuracy,
        "history": history,
        "torch_version": torch.__version__,
        "onnx_version": onnx.__version__,
    }
    with open(base + ".json", "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()

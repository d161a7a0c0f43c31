"""Make the small test fixtures: tiny ONNX models and MNIST subsets.

Needs: the Debian python `/usr/bin/python3` with PyTorch 1.13 (CPU), onnx 1.12 and
numpy (packages `python3-torch`, `python3-onnx`, `python3-numpy`).

Run from the project root:
    /usr/bin/python3 tools/make_fixtures.py

Reads ../shared/datasets/mnist/*.gz. Writes (deterministic: seed 0, 2 threads; the
IDX .gz and .npz files are byte-reproducible, the ONNX files up to float rounding
of the training run):
    fixtures/tiny_cnn.onnx          Conv3x3x4-Relu-MaxPool2-Conv3x3x8-Relu-MaxPool2-Flatten-Gemm(200->10),
                                    trained 1 epoch on all of MNIST; input `input` [batch,1,28,28]
                                    (pixels/255, no mean/std), output `logits` [batch,10]; opset 13.
    fixtures/tiny_cnn_softmax.onnx  the same weights plus a trailing Softmax, output `probs`.
    fixtures/tiny_cnn.json          its accuracy on the 10,000 and the first 500 test images.
    fixtures/tiny_mlp.onnx          Flatten-Gemm(784->12)-Relu-Gemm(12->10), no conv/pool
                                    (nnmend must refuse to cut it); trained 1 epoch.
    fixtures/tiny_two_inputs.onnx   a small conv net with two data inputs `image` and `aux`,
                                    both [batch,1,28,28] (nnmend must refuse it); random weights.
    fixtures/mnist-small/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
                                    the first 2,000 train and the first 500 test images and
                                    labels, byte-exact IDX (gzip, mtime 0).
    fixtures/mnist-small-test.npz   the same 500 test images: `x` float32 [500,1,28,28] in [0,1],
                                    `y` int64 [500]; deflate-compressed npz with fixed timestamps.
"""

import io
import json
import os
import sys
import zipfile

import numpy as np
import onnx
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mnist_idx import load_split, read_idx, to_nchw_float, write_idx_gz  # noqa: E402

SEED = 0
OPSET = 13
TRAIN_SUBSET = 2000
TEST_SUBSET = 500


class TinyCnn(nn.Module):
    def __init__(self, softmax=False):
        super().__init__()
        layers = [
            nn.Conv2d(1, 4, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 8, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(8 * 5 * 5, 10),
        ]
        if softmax:
            layers.append(nn.Softmax(dim=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class TinyMlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 12), nn.ReLU(), nn.Linear(12, 10))

    def forward(self, x):
        return self.net(x)


class TwoInputs(nn.Module):
    """conv(image) + conv(aux) -> Relu -> MaxPool -> Flatten -> Gemm."""

    def __init__(self):
        super().__init__()
        self.conv_image = nn.Conv2d(1, 4, 3)
        self.conv_aux = nn.Conv2d(1, 4, 3)
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * 13 * 13, 10)

    def forward(self, image, aux):
        x = torch.relu(self.conv_image(image) + self.conv_aux(aux))
        return self.fc(self.flatten(self.pool(x)))


def train_one_epoch(model, x, y, batch=64, lr=3e-3):
    generator = torch.Generator().manual_seed(SEED)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    order = torch.randperm(len(x), generator=generator)
    for i in range(0, len(order), batch):
        idx = order[i : i + batch]
        optimiser.zero_grad()
        loss_fn(model(x[idx]), y[idx]).backward()
        optimiser.step()
    model.eval()


def accuracy(model, x, y):
    with torch.no_grad():
        return int((model(x).argmax(1) == y).sum().item()) / len(y)


def export(model, args, path, input_names, output_names):
    dynamic = {name: {0: "batch"} for name in input_names + output_names}
    torch.onnx.export(
        model,
        args,
        path,
        input_names=input_names,
        output_names=output_names,
        dynamic_axes=dynamic,
        opset_version=OPSET,
        do_constant_folding=True,
    )
    onnx.checker.check_model(onnx.load(path), full_check=True)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)", file=sys.stderr)


def write_npz(path, arrays):
    """Like np.savez_compressed, but with fixed zip timestamps so the bytes are reproducible."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, buffer.getvalue(), compresslevel=9)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)", file=sys.stderr)


def make_subsets():
    os.makedirs("fixtures/mnist-small", exist_ok=True)
    for split, limit, prefix in (("train", TRAIN_SUBSET, "train"), ("test", TEST_SUBSET, "t10k")):
        images, labels = load_split(split, limit=limit)
        image_path = f"fixtures/mnist-small/{prefix}-images-idx3-ubyte.gz"
        label_path = f"fixtures/mnist-small/{prefix}-labels-idx1-ubyte.gz"
        write_idx_gz(image_path, images)
        write_idx_gz(label_path, labels)
        # Read back: the subset must equal the source prefix exactly.
        assert np.array_equal(read_idx(image_path), images) and np.array_equal(read_idx(label_path), labels)
        print(f"wrote {image_path}, {label_path} ({len(images)} images)", file=sys.stderr)
    images, labels = load_split("test", limit=TEST_SUBSET)
    write_npz("fixtures/mnist-small-test.npz", {"x": to_nchw_float(images), "y": labels.astype(np.int64)})


def main():
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    os.makedirs("fixtures", exist_ok=True)

    make_subsets()

    train_images, train_labels = load_split("train")
    test_images, test_labels = load_split("test")
    x_train = torch.from_numpy(to_nchw_float(train_images))
    y_train = torch.from_numpy(train_labels.astype(np.int64))
    x_test = torch.from_numpy(to_nchw_float(test_images))
    y_test = torch.from_numpy(test_labels.astype(np.int64))
    dummy = torch.zeros(1, 1, 28, 28)

    torch.manual_seed(SEED)
    cnn = TinyCnn()
    train_one_epoch(cnn, x_train, y_train)
    export(cnn, (dummy,), "fixtures/tiny_cnn.onnx", ["input"], ["logits"])
    cnn_softmax = TinyCnn(softmax=True)
    cnn_softmax.load_state_dict(cnn.state_dict())
    cnn_softmax.eval()
    export(cnn_softmax, (dummy,), "fixtures/tiny_cnn_softmax.onnx", ["input"], ["probs"])
    info = {
        "model": "tiny_cnn.onnx",
        "softmax_variant": "tiny_cnn_softmax.onnx",
        "architecture": "Conv3x3x4-Relu-MaxPool2-Conv3x3x8-Relu-MaxPool2-Flatten-Gemm200x10",
        "opset": OPSET,
        "epochs": 1,
        "seed": SEED,
        "optimiser": "Adam(lr=3e-3), batch 64",
        "test_accuracy": accuracy(cnn, x_test, y_test),
        "test_accuracy_first_500": accuracy(cnn, x_test[:TEST_SUBSET], y_test[:TEST_SUBSET]),
        "torch_version": torch.__version__,
    }
    with open("fixtures/tiny_cnn.json", "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    print(json.dumps(info, indent=2))

    torch.manual_seed(SEED)
    mlp = TinyMlp()
    train_one_epoch(mlp, x_train, y_train)
    print(f"tiny_mlp test accuracy {accuracy(mlp, x_test, y_test):.4f}", file=sys.stderr)
    export(mlp, (dummy,), "fixtures/tiny_mlp.onnx", ["input"], ["logits"])

    torch.manual_seed(SEED)
    two = TwoInputs().eval()
    export(two, (dummy, dummy), "fixtures/tiny_two_inputs.onnx", ["image", "aux"], ["logits"])


if __name__ == "__main__":
    main()

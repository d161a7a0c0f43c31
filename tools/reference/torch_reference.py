"""PyTorch reference values for nnmend's gradient graph and its FGSM attack on MNIST-NN.

Rebuilds the seed paper's MNIST-NN (`MnistNN` from `train_mnist.py`) in PyTorch with the
weights read from `fixtures/mnist_paper.onnx`, checks it against onnxruntime's logits in
`fixtures/reference/mnist_paper_logits.npy`, then computes:

1. Input gradients, in pixel space [0, 1], of two per-sample losses on the first 8 MNIST
   test images (no averaging over the batch, so each image's gradient is its own):
       cross-entropy  loss_i = logsumexp(z_i) - z_i[y_i]
       margin         loss_i = z_i[y_i] - max_{k != y_i} z_i[k]
   in float32 and again in float64 (the model cast to double).
2. Untargeted FGSM on the true label over the first N (default 2,000) test images,
   float32, batch 256:  x' = clamp(x + eps * sign(grad_ce(x)), 0, 1)  for each eps in
   0.025, 0.05, ..., 0.15, with
       clean_correct   = argmax z(x)  == y
       adv_correct     = argmax z(x') == y
       robust_accuracy = mean(clean_correct & adv_correct)
       success_rate    = #(clean_correct & !adv_correct) / #clean_correct
   argmax takes the first index on ties (PyTorch's rule); ties are counted and reported.

Conventions of PyTorch's backward that a reimplementation must share to match bit for
bit in sign: ReLU passes gradient only where its input is > 0 (none at exactly 0);
MaxPool sends a window's gradient to the first maximal element in row-major order
(onnxruntime's MaxPool `Indices` use the same rule). Background pixels make many
pooling windows tie (a conv over zeros gives exactly its bias), so this matters; the
JSON counts the tied windows.

Needs: the Debian python `/usr/bin/python3` with PyTorch 1.13 (CPU), onnx and numpy
(packages `python3-torch`, `python3-onnx`, `python3-numpy`). One thread, for determinism.

Run from the project root:
    /usr/bin/python3 tools/reference/torch_reference.py [--data ../shared/datasets/mnist] [-n 2000]

Reads fixtures/mnist_paper.onnx, the MNIST test split in --data, and (for the checks)
fixtures/mnist-small/ and fixtures/reference/mnist_paper_logits.npy. Writes:
    fixtures/reference/grad_mnist_paper.npz   (deflate npz with fixed timestamps, so the bytes
        are reproducible) `x` float32 [8,1,28,28], `y` int64 [8], `logits` float32 [8,10],
        `loss_ce`, `loss_margin` float32 [8], `grad_ce`, `grad_margin` float32 [8,1,28,28],
        and the float64 gradients `grad_ce64` then `grad_margin64` [8,1,28,28] each as long
        as the file stays within --max-npz-bytes (default 100,000: `grad_ce64` fits,
        `grad_margin64` does not); the JSON has the f32-vs-f64 gaps either way.
    fixtures/reference/fgsm_mnist_paper.json  versions, clean accuracy, per-eps robust
        accuracy, success rate, counts, and `robust_mask_hex`: the per-image bits of
        (clean_correct & adv_correct), np.packbits(bits, bitorder="big").hex(), i.e.
        image i is bit (7 - i % 8) of byte i // 8; `clean_mask_hex` likewise for
        clean_correct; per eps also the robust count when the sign comes from the float64
        gradient (`robust_correct_f64_sign`, `robust_mask_diff_f64_sign`), a yardstick for
        how far another float32 implementation may honestly differ. Also the gradient
        section (f32 vs f64 gaps, sign disagreements, tie counts).
Takes about half a minute on one core.
"""

import argparse
import copy
import io
import json
import os
import sys
import time
import zipfile

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch.nn import functional as F

TOOLS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(TOOLS, folder) for folder in ("common", "train")]
from mnist_idx import load_split, to_nchw_float  # noqa: E402
from train_mnist import MnistNN  # noqa: E402

MODEL = "fixtures/mnist_paper.onnx"
OUT = "fixtures/reference"
SMALL = "fixtures/mnist-small"
ORT_LOGITS = "fixtures/reference/mnist_paper_logits.npy"
EPSILONS = [0.025, 0.05, 0.075, 0.1, 0.125, 0.15]
GRAD_IMAGES = 8
BATCH = 256

# The ONNX graph torch.onnx.export wrote for MnistNN, node by node, with the attributes
# that must hold for the PyTorch modules to compute the same function.
EXPECTED_OPS = ["Conv", "Relu", "MaxPool", "Conv", "Relu", "MaxPool", "Flatten", "Gemm", "Relu", "Gemm"]
EXPECTED_ATTRS = {
    "Conv": {"dilations": [1, 1], "group": 1, "kernel_shape": [5, 5], "pads": [0, 0, 0, 0], "strides": [1, 1]},
    "MaxPool": {"ceil_mode": 0, "kernel_shape": [2, 2], "pads": [0, 0, 0, 0], "strides": [2, 2]},
    "Flatten": {"axis": 1},
    "Gemm": {"alpha": 1.0, "beta": 1.0, "transB": 1},
}


def load_onnx_weights(model, path):
    """Copy the ONNX initializers into `model`, checking the graph is the one MnistNN exports.

    The mapping follows the graph, not the names: the weight and bias inputs of the
    Conv and Gemm nodes, in node order, go to model.parameters() in declaration order
    (conv1, conv2, fc1, fc2; weight then bias), each checked for shape. Every parameter
    must be filled and every initializer used exactly once.
    """
    graph = onnx.load(path).graph
    ops = [node.op_type for node in graph.node]
    if ops != EXPECTED_OPS:
        raise SystemExit(f"{path}: nodes {ops}, expected {EXPECTED_OPS}")
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        for name, want in EXPECTED_ATTRS.get(node.op_type, {}).items():
            got = attrs.get(name)
            if isinstance(got, (list, tuple)):
                got = list(got)
            if got != want:
                raise SystemExit(f"{path}: {node.op_type} {node.name} has {name}={got}, expected {want}")
        if node.op_type == "Gemm" and attrs.get("transA", 0) != 0:
            raise SystemExit(f"{path}: Gemm {node.name} has transA set")
    initializers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    weight_names = [name for node in graph.node if node.op_type in ("Conv", "Gemm") for name in node.input[1:]]
    params = list(model.named_parameters())
    if len(weight_names) != len(params) or len(set(weight_names)) != len(weight_names):
        raise SystemExit(f"{path}: weight inputs {weight_names} do not match {len(params)} parameters")
    if set(weight_names) != set(initializers):
        raise SystemExit(f"{path}: initializers {sorted(initializers)} vs weight inputs {weight_names}")
    state = {}
    for (param_name, param), onnx_name in zip(params, weight_names):
        array = initializers[onnx_name]
        if tuple(array.shape) != tuple(param.shape) or array.dtype != np.float32:
            raise SystemExit(f"{onnx_name} {array.dtype}{list(array.shape)} cannot fill {param_name} {list(param.shape)}")
        state[param_name] = torch.from_numpy(array.copy())
    missing = set(model.state_dict()) - set(state)
    if missing:
        raise SystemExit(f"parameters left unfilled: {sorted(missing)}")
    model.load_state_dict(state, strict=True)
    return [(p, o) for (p, _), o in zip(params, weight_names)]


def per_sample_loss(z, y, kind):
    """[N] losses: 'ce' = logsumexp(z) - z[y]; 'margin' = z[y] - max over k != y of z[k]."""
    if kind == "ce":
        return F.cross_entropy(z, y, reduction="none")
    true = z.gather(1, y[:, None])[:, 0]
    others = z.masked_fill(F.one_hot(y, z.shape[1]).bool(), float("-inf"))
    return true - others.max(1).values


def input_gradient(model, x, y, kind):
    """(logits, per-sample loss, d loss_i / d x_i) for a batch; summing the independent
    per-sample losses gives each image the gradient of its own loss."""
    x = x.detach().clone().requires_grad_(True)
    z = model(x)
    loss = per_sample_loss(z, y, kind)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return z.detach(), loss.detach(), grad


def argmax_ties(z):
    """Number of rows whose maximum is attained more than once."""
    return int(((z == z.max(1, keepdim=True).values).sum(1) > 1).sum())


def pool_ties(model, x):
    """For each MaxPool: (windows whose maximum is > 0 and attained more than once, all windows).

    Only positive maxima matter: a window with maximum 0 passes no gradient through the
    ReLU before it (ReLU'(0) = 0), whichever element the pool picks.
    """
    counts = []
    h = x
    with torch.no_grad():
        for layer in model.features:
            if isinstance(layer, torch.nn.MaxPool2d):
                windows = F.unfold(h.flatten(0, 1)[:, None], kernel_size=2, stride=2)  # [N*C, 4, L]
                top = windows.max(1, keepdim=True).values
                tied = ((windows == top).sum(1) > 1) & (top[:, 0] > 0)
                counts.append([int(tied.sum()), int(tied.numel())])
            h = layer(h)
    return counts


def hex_mask(bits):
    return np.packbits(np.asarray(bits, dtype=np.uint8), bitorder="big").tobytes().hex()


def write_npz(path, arrays):
    """Deflate npz whose bytes depend only on the arrays (zip entries dated 1980-01-01)."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, array in arrays.items():
            payload = io.BytesIO()
            np.lib.format.write_array(payload, np.ascontiguousarray(array), allow_pickle=False)
            entry = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            entry.compress_type = zipfile.ZIP_DEFLATED
            entry.external_attr = 0o644 << 16
            archive.writestr(entry, payload.getvalue(), compresslevel=9)
    return os.path.getsize(path)


def check_against_onnxruntime(model):
    """Max |torch - onnxruntime| logits on the images crosscheck.py used (first 16 of mnist-small t10k)."""
    if not os.path.exists(ORT_LOGITS):
        print(f"note: {ORT_LOGITS} missing, skipping the onnxruntime comparison", file=sys.stderr)
        return None
    expected = np.load(ORT_LOGITS)
    images, _ = load_split("test", SMALL, limit=len(expected))
    with torch.no_grad():
        got = model(torch.from_numpy(to_nchw_float(images))).numpy()
    gap = float(np.abs(got - expected).max())
    if gap > 1e-4:
        raise SystemExit(f"torch logits differ from onnxruntime's ({ORT_LOGITS}) by {gap}")
    return {"reference": ORT_LOGITS, "images": len(expected), "max_abs_diff": gap}


def gradient_reference(model, x, y, max_bytes):
    """Item 1 of the module docstring; writes the npz and returns the JSON summary.

    max_rel_diff is per image (max |g32 - g64| over its pixels / max |g64|), worst image.
    """
    model64 = copy.deepcopy(model).double()
    arrays = {"x": x.numpy(), "y": y.numpy().astype(np.int64)}
    summary = {"file": f"{OUT}/grad_mnist_paper.npz", "images": len(x)}
    for kind in ("ce", "margin"):
        z, loss, grad = input_gradient(model, x, y, kind)
        z64, loss64, grad64 = input_gradient(model64, x.double(), y, kind)
        arrays["logits"] = z.numpy()
        arrays[f"loss_{kind}"] = loss.numpy()
        arrays[f"grad_{kind}"] = grad.numpy()
        arrays[f"grad_{kind}64"] = grad64.numpy()
        gap = (grad.double() - grad64).abs()
        scale = grad64.abs().flatten(1).max(1).values
        summary[kind] = {
            "max_abs_diff_grad_f32_f64": float(gap.max()),
            "max_rel_diff_grad_f32_f64": float((gap.flatten(1).max(1).values / scale).max()),
            "max_abs_grad_f64": float(scale.max()),
            "max_abs_diff_loss_f32_f64": float((loss.double() - loss64).abs().max()),
            "max_abs_diff_logits_f32_f64": float((z.double() - z64).abs().max()),
            "grad_zero_entries_f32": int((grad == 0).sum()),
            "sign_disagreements_f32_f64": int((grad.sign().double() != grad64.sign()).sum()),
        }
    logits = torch.from_numpy(arrays["logits"])
    summary["logit_argmax_ties"] = argmax_ties(logits)
    others = logits.masked_fill(F.one_hot(y, 10).bool(), float("-inf"))
    summary["margin_runner_up_ties"] = argmax_ties(others)
    summary["maxpool_tied_windows"] = [
        {"layer": i + 1, "tied_positive_windows": t, "windows": w} for i, (t, w) in enumerate(pool_ties(model, x))
    ]
    # The float64 gradients go in one by one, cross-entropy first (its float32 version
    # is the inexact one), while the file stays within max_bytes.
    path = f"{OUT}/grad_mnist_paper.npz"
    wide = {name: arrays.pop(name) for name in ("grad_ce64", "grad_margin64")}
    size = write_npz(path, arrays)
    summary["float64_arrays"], summary["float64_left_out"] = [], []
    for name, array in wide.items():
        arrays[name] = array
        grown = write_npz(path, arrays)
        if grown <= max_bytes:
            size = grown
            summary["float64_arrays"].append(name)
        else:
            del arrays[name]
            summary["float64_left_out"].append(name)
    if summary["float64_left_out"]:
        size = write_npz(path, arrays)
    summary["bytes"] = size
    summary["keys"] = list(arrays)
    return summary


def fgsm_reference(model, x, y):
    """Item 2 of the module docstring: returns the JSON's clean and per-eps fields.

    Alongside, as a yardstick for other implementations: the same attack with the sign
    taken from the float64 gradient (the adversarial images still evaluated in float32).
    Where the true-class probability rounds to 1 in float32, softmax - onehot loses most
    of its digits there, so float32 gradients of confident images differ in sign from
    the exact ones in places; the JSON counts those entries and the images whose
    robust bit changes because of them.
    """
    model64 = copy.deepcopy(model).double()
    n = len(x)
    clean_correct = np.zeros(n, dtype=bool)
    adv_correct = {eps: np.zeros(n, dtype=bool) for eps in EPSILONS}
    adv_correct64 = {eps: np.zeros(n, dtype=bool) for eps in EPSILONS}
    adv_ties = {eps: 0 for eps in EPSILONS}
    clean_ties = zero_entries = zero_images = sign_flips = 0
    for start in range(0, n, BATCH):
        xb, yb = x[start : start + BATCH], y[start : start + BATCH]
        rows = slice(start, start + len(xb))
        z, _, grad = input_gradient(model, xb, yb, "ce")
        _, _, grad64 = input_gradient(model64, xb.double(), yb, "ce")
        clean_correct[rows] = (z.argmax(1) == yb).numpy()
        clean_ties += argmax_ties(z)
        zero_entries += int((grad == 0).sum())
        zero_images += int((grad.flatten(1) == 0).all(1).sum())
        step, step64 = grad.sign(), grad64.sign().float()
        sign_flips += int((step != step64).sum())
        with torch.no_grad():
            for eps in EPSILONS:
                z_adv = model((xb + eps * step).clamp(0.0, 1.0))
                adv_correct[eps][rows] = (z_adv.argmax(1) == yb).numpy()
                adv_ties[eps] += argmax_ties(z_adv)
                z_adv64 = model((xb + eps * step64).clamp(0.0, 1.0))
                adv_correct64[eps][rows] = (z_adv64.argmax(1) == yb).numpy()
    results = []
    for eps in EPSILONS:
        robust = clean_correct & adv_correct[eps]
        flipped = clean_correct & ~adv_correct[eps]
        robust64 = clean_correct & adv_correct64[eps]
        results.append(
            {
                "eps": eps,
                "robust_accuracy": float(robust.mean()),
                "success_rate": float(flipped.sum() / clean_correct.sum()),
                "robust_correct": int(robust.sum()),
                "adv_correct": int(adv_correct[eps].sum()),
                "adv_argmax_ties": adv_ties[eps],
                "grad_zero_entries": zero_entries,
                "robust_correct_f64_sign": int(robust64.sum()),
                "robust_mask_diff_f64_sign": int((robust != robust64).sum()),
                "robust_mask_hex": hex_mask(robust),
            }
        )
    clean = {
        "clean_accuracy": float(clean_correct.mean()),
        "clean_correct": int(clean_correct.sum()),
        "clean_argmax_ties": clean_ties,
        "grad_zero_entries": zero_entries,
        "grad_entries": int(n * 28 * 28),
        "grad_all_zero_images": zero_images,
        "grad_sign_diff_f32_f64": sign_flips,
        "clean_mask_hex": hex_mask(clean_correct),
    }
    return clean, results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/datasets/mnist", help="directory with the MNIST IDX .gz files")
    parser.add_argument("-n", type=int, default=2000, help="test images for FGSM (default 2000)")
    parser.add_argument("--max-npz-bytes", type=int, default=100_000)
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(0)
    start = time.time()

    model = MnistNN()
    mapping = load_onnx_weights(model, MODEL)
    model.eval()
    onnx_check = check_against_onnxruntime(model)

    images, labels = load_split("test", args.data, limit=max(args.n, GRAD_IMAGES))
    small, small_labels = load_split("test", SMALL, limit=GRAD_IMAGES)
    if not (np.array_equal(small, images[:GRAD_IMAGES]) and np.array_equal(small_labels, labels[:GRAD_IMAGES])):
        raise SystemExit(f"the first {GRAD_IMAGES} test images of {args.data} and {SMALL} differ")
    x = torch.from_numpy(to_nchw_float(images))
    y = torch.from_numpy(labels.astype(np.int64))

    os.makedirs(OUT, exist_ok=True)
    gradients = gradient_reference(model, x[:GRAD_IMAGES], y[:GRAD_IMAGES], args.max_npz_bytes)
    clean, results = fgsm_reference(model, x[: args.n], y[: args.n])

    report = {
        "model": MODEL,
        "data": f"{args.data} test split, first {args.n} images",
        "preprocessing": "pixels/255 in [0,1], NCHW, no mean/std",
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "threads": 1,
        "dtype": "float32",
        "batch": BATCH,
        "weights": {"mapping": [{"torch": t, "onnx": o} for t, o in mapping], "onnxruntime_check": onnx_check},
        "attack": "untargeted FGSM on the true label: x' = clamp(x + eps*sign(d CE_i / d x), 0, 1)",
        "loss": "per-sample cross-entropy logsumexp(z) - z[y] (not averaged)",
        "argmax": "first index on ties",
        "mask_encoding": "np.packbits(bits, bitorder='big').hex(): image i is bit (7 - i % 8) of byte i // 8",
        "n": args.n,
        **clean,
        "results": results,
        "gradients": gradients,
    }
    path = f"{OUT}/fgsm_mnist_paper.json"
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")

    print(f"weights: {len(mapping)} tensors from {MODEL}; torch vs onnxruntime logits: "
          f"{onnx_check['max_abs_diff'] if onnx_check else 'not checked'}")
    for kind in ("ce", "margin"):
        g = gradients[kind]
        print(f"grad {kind:6}: max |f32 - f64| {g['max_abs_diff_grad_f32_f64']:.3g} "
              f"(relative {g['max_rel_diff_grad_f32_f64']:.3g}), sign flips {g['sign_disagreements_f32_f64']}, "
              f"zeros {g['grad_zero_entries_f32']}")
    print(f"maxpool tied windows (8 images): {gradients['maxpool_tied_windows']}")
    print(f"wrote {gradients['file']} ({gradients['bytes']} bytes; float64 arrays: {gradients['float64_arrays']})")
    print(f"n {args.n}: clean accuracy {clean['clean_accuracy']:.4f}, zero gradient entries "
          f"{clean['grad_zero_entries']} of {clean['grad_entries']}, clean argmax ties {clean['clean_argmax_ties']}")
    print(f"gradient entries whose f32 sign differs from the f64 one: {clean['grad_sign_diff_f32_f64']}")
    print(f"{'eps':>6} {'robust acc':>10} {'success':>8} {'robust':>6} {'ties':>4} {'robust(f64 sign)':>16} {'mask diff':>9}")
    for r in results:
        print(f"{r['eps']:6.3f} {r['robust_accuracy']:10.4f} {r['success_rate']:8.4f} "
              f"{r['robust_correct']:6d} {r['adv_argmax_ties']:4d} {r['robust_correct_f64_sign']:16d} "
              f"{r['robust_mask_diff_f64_sign']:9d}")
    print(f"wrote {path} ({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()

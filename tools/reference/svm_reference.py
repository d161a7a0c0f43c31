"""Reference results of scikit-learn's LinearSVC for cross-checking nnmend's SVM.

What it does: loads MNIST from ../shared/datasets/mnist (relative to the current
directory, which must be the project root), takes the first 2000 training and
the first 1000 test images, scales the pixels to [0, 1] (pixels / 255, flattened
to 784 features), and fits one-vs-rest LinearSVC models with C = 0.1:

    squared_hinge: LinearSVC(C=0.1, loss="squared_hinge", dual=True, tol=1e-6, max_iter=100000)
    hinge:         LinearSVC(C=0.1, loss="hinge",         dual=True, tol=1e-6, max_iter=100000)

LinearSVC (LIBLINEAR) appends a constant feature 1 for the intercept
(intercept_scaling=1), so the bias is regularised like the weights. For each
class k the primal objective is recomputed here in float64 from coef_ and
intercept_ with that augmented bias:

    P_k = 1/2 (|w_k|^2 + b_k^2) + C * sum_i loss(1 - y_ik (w_k . x_i + b_k)),
    y_ik = +1 if label_i == k else -1, loss(t) = max(0, t)^2 or max(0, t).

Writes fixtures/reference/svm_mnist_pixels.json with, per loss: C, n_train,
n_test, tol, max_iter, n_iter, per-class primal objective, total objective,
train and test accuracy, and the first 50 test predictions.

Needs: pip install numpy scikit-learn
Run from the project root:
    python3 tools/reference/svm_reference.py
"""

import gzip
import json
import os
import struct
import warnings

import numpy as np
import sklearn
from sklearn.svm import LinearSVC

MNIST_DIR = "../shared/datasets/mnist"
OUT = "fixtures/reference/svm_mnist_pixels.json"
N_TRAIN, N_TEST, C = 2000, 1000, 0.1
TOL, MAX_ITER = 1e-6, 100_000


def read_idx_gz(path):
    """Return the uint8 array of a gzip-compressed IDX file."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(images, labels, limit):
    x = read_idx_gz(f"{MNIST_DIR}/{images}")[:limit]
    y = read_idx_gz(f"{MNIST_DIR}/{labels}")[:limit].astype(np.int64)
    # float32 like nnmend's features, then /255 in float32 as nnmend does.
    return (x.reshape(len(x), -1).astype(np.float32) / np.float32(255.0)), y


def primal_objectives(model, x, y, loss):
    x = x.astype(np.float64)
    out = []
    for k in range(model.coef_.shape[0]):
        w, b = model.coef_[k].astype(np.float64), float(model.intercept_[k])
        yk = np.where(y == k, 1.0, -1.0)
        slack = np.maximum(0.0, 1.0 - yk * (x @ w + b))
        penalty = np.sum(slack**2) if loss == "squared_hinge" else np.sum(slack)
        out.append(0.5 * (w @ w + b * b) + C * penalty)
    return out


def main():
    xtr, ytr = load("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", N_TRAIN)
    xte, yte = load("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", N_TEST)
    result = {
        "description": "sklearn LinearSVC (one-vs-rest, dual coordinate descent) on MNIST "
        "pixels/255: first n_train train and first n_test test images",
        "sklearn_version": sklearn.__version__,
        "C": C,
        "n_train": N_TRAIN,
        "n_test": N_TEST,
        "n_features": int(xtr.shape[1]),
        "intercept_scaling": 1.0,
    }
    for loss in ("squared_hinge", "hinge"):
        model = LinearSVC(C=C, loss=loss, dual=True, tol=TOL, max_iter=MAX_ITER)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(xtr, ytr)
        if caught:
            raise SystemExit(f"{loss}: {[str(w.message) for w in caught]}")
        per_class = primal_objectives(model, xtr, ytr, loss)
        result[loss] = {
            "C": C,
            "n_train": N_TRAIN,
            "n_test": N_TEST,
            "tol": TOL,
            "max_iter": MAX_ITER,
            "n_iter": int(model.n_iter_),
            "per_class_objective": per_class,
            "objective": float(sum(per_class)),
            "train_accuracy": float(np.mean(model.predict(xtr) == ytr)),
            "test_accuracy": float(np.mean(model.predict(xte) == yte)),
            "first_50_test_predictions": [int(p) for p in model.predict(xte[:50])],
        }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    for loss in ("squared_hinge", "hinge"):
        r = result[loss]
        print(f"{loss}: objective {r['objective']:.6f} train {r['train_accuracy']:.4f} "
              f"test {r['test_accuracy']:.4f} n_iter {r['n_iter']}")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

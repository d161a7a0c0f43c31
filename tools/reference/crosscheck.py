"""Record onnxruntime and scikit-learn reference values beside the fixtures.

The Rust tests compare nnmend's cut, features, logits and linear-SVM objective with
these numbers, so they need no Python themselves.

Needs the pyenv `python3` with onnx, onnxruntime, numpy and scikit-learn
(`pip install onnx onnxruntime numpy scikit-learn`).

Run from the project root, after tools/fixtures/make_fixtures.py and tools/train/train_mnist.py:
    python3 tools/reference/crosscheck.py

Reads fixtures/tiny_cnn.onnx, fixtures/mnist_paper.onnx and the fixture subsets in
fixtures/mnist-small/ (2,000 train, 500 test; pixels / 255, NCHW, no mean/std).
For each model M in {tiny_cnn, mnist_paper}, writes:
    fixtures/reference/M_features.npy  float32 [16, D]: the cut tensor (output of the last
                                       pooling node on the path to the output, in topological
                                       order) on the first 16 test images, flattened in C order
    fixtures/reference/M_logits.npy    float32 [16, 10]: the model's output on the same images
    fixtures/reference/M.json          the cut (tensor, node, op, feature_shape per sample, D);
                                       the NN's accuracy on the 500 test images (argmax of
                                       logits); and the LinearSVC(C=1, squared hinge, dual,
                                       tol=1e-5, max_iter=100000, random_state=0) fitted on the
                                       2,000 train features: train/test accuracy, per-class primal
                                       objective and its sum (for tiny_cnn also with hinge loss)
and fixtures/reference/cuts.json: the cut found in every fixture model and in every model
of ../shared/models (null where there is no pooling layer).

Primal objective of one-vs-rest class k (labels t = +1 for class k, -1 otherwise,
f = w.x + b; LIBLINEAR regularises the bias because intercept_scaling = 1):
    squared hinge: 1/2 (|w|^2 + b^2) + C sum_i max(0, 1 - t_i f_i)^2
    hinge:         1/2 (|w|^2 + b^2) + C sum_i max(0, 1 - t_i f_i)
"""

import glob
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime
import sklearn
from sklearn.svm import LinearSVC

TOOLS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(TOOLS, folder) for folder in ("common", "reference")]
from mnist_idx import load_split, to_nchw_float  # noqa: E402
from ort_common import data_inputs, find_cut, flat, run, tensor_type, with_output  # noqa: E402

MODELS = ["fixtures/tiny_cnn.onnx", "fixtures/mnist_paper.onnx"]
CUT_MODELS = [
    "fixtures/tiny_cnn.onnx",
    "fixtures/tiny_cnn_softmax.onnx",
    "fixtures/tiny_mlp.onnx",
    "fixtures/tiny_two_inputs.onnx",
    "fixtures/mnist_paper.onnx",
] + sorted(glob.glob("../shared/models/*.onnx"))
DATA = "fixtures/mnist-small"
OUT = "fixtures/reference"
PROBE = 16
C = 1.0
SVM = dict(C=C, dual=True, tol=1e-5, max_iter=100000, random_state=0)


def objective(svm, x, y, loss):
    """Per-class primal objective of a fitted one-vs-rest LinearSVC, in float64."""
    x = x.astype(np.float64)
    values = []
    for k, cls in enumerate(svm.classes_):
        w, b = svm.coef_[k].astype(np.float64), float(svm.intercept_[k])
        t = np.where(y == cls, 1.0, -1.0)
        slack = np.maximum(0.0, 1.0 - t * (x @ w + b))
        penalty = np.sum(slack**2) if loss == "squared_hinge" else np.sum(slack)
        values.append(0.5 * (w @ w + b * b) + C * penalty)
    return values


def fit_svm(loss, x_train, y_train, x_test, y_test):
    svm = LinearSVC(loss=loss, **SVM).fit(x_train, y_train)
    per_class = objective(svm, x_train, y_train, loss)
    return {
        "params": {"loss": loss, **SVM, "multi_class": "ovr", "intercept_scaling": 1.0},
        "n_iter": int(svm.n_iter_),
        "train_accuracy": float(svm.score(x_train, y_train)),
        "test_accuracy": float(svm.score(x_test, y_test)),
        "objective_per_class": [float(v) for v in per_class],
        "objective_sum": float(np.sum(per_class)),
    }


def cut_info(model):
    found = find_cut(model)
    if found is None:
        return None
    node, position = found
    value_type = tensor_type(model, node.output[0])
    shape = None
    if value_type is not None and value_type.tensor_type.HasField("shape"):
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in value_type.tensor_type.shape.dim]
    return {"tensor": node.output[0], "node": node.name, "op": node.op_type, "position": position, "inferred_shape": shape}


def reference(path, probe, train, test):
    stem = os.path.splitext(os.path.basename(path))[0]
    model = onnx.load(path)
    cut = cut_info(model)
    if cut is None:
        raise SystemExit(f"{path}: no pooling layer on the path to the output")
    logits_name = model.graph.output[0].name
    extended = with_output(model, cut["tensor"])
    outputs = [cut["tensor"], logits_name]

    features, logits = run(extended, probe[0], outputs)
    np.save(f"{OUT}/{stem}_features.npy", flat(features))
    np.save(f"{OUT}/{stem}_logits.npy", np.ascontiguousarray(logits, dtype=np.float32))

    f_train, _ = run(extended, train[0], outputs)
    f_test, test_logits = run(extended, test[0], outputs)
    f_train, f_test = flat(f_train), flat(f_test)
    info = {
        "model": path,
        "input": data_inputs(model)[0].name,
        "output": logits_name,
        "cut": {
            "tensor": cut["tensor"],
            "node": cut["node"],
            "op": cut["op"],
            "feature_shape": list(features.shape[1:]),
            "feature_dim": int(f_train.shape[1]),
        },
        "probe": {"images": f"first {PROBE} of {DATA} t10k", "features": f"{stem}_features.npy", "logits": f"{stem}_logits.npy"},
        "data": {"train": f"{DATA} train ({len(train[1])})", "test": f"{DATA} t10k ({len(test[1])})", "preprocessing": "pixels/255, NCHW"},
        "nn_test_accuracy": float(np.mean(test_logits.argmax(1) == test[1])),
        "svm": fit_svm("squared_hinge", f_train, train[1], f_test, test[1]),
        "versions": {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__, "sklearn": sklearn.__version__, "numpy": np.__version__},
    }
    if stem == "tiny_cnn":
        info["svm_hinge"] = fit_svm("hinge", f_train, train[1], f_test, test[1])
    with open(f"{OUT}/{stem}.json", "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    print(f"{stem}: cut {cut['tensor']} ({cut['op']} {cut['node']}), D={info['cut']['feature_dim']}, "
          f"NN {info['nn_test_accuracy']:.4f}, SVM train {info['svm']['train_accuracy']:.4f} "
          f"test {info['svm']['test_accuracy']:.4f}, objective {info['svm']['objective_sum']:.6f}")


def main():
    os.makedirs(OUT, exist_ok=True)
    train_images, train_labels = load_split("train", directory=DATA)
    test_images, test_labels = load_split("test", directory=DATA)
    train = (to_nchw_float(train_images), train_labels.astype(np.int64))
    test = (to_nchw_float(test_images), test_labels.astype(np.int64))
    probe = (test[0][:PROBE], test[1][:PROBE])
    for path in MODELS:
        reference(path, probe, train, test)

    cuts = {}
    for path in CUT_MODELS:
        cut = cut_info(onnx.load(path))
        cuts[path] = cut
        print(f"cut of {path}: {cut['tensor'] + ' (' + cut['op'] + ' ' + cut['node'] + ')' if cut else None}")
    with open(f"{OUT}/cuts.json", "w") as f:
        json.dump(cuts, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()

"""Reference results of scikit-learn's primal LinearSVC on fixtures/svm-overlap.npz.

Fits, one-vs-rest, with C = 1:

    primal: LinearSVC(C=1, loss="squared_hinge", dual=False, tol=1e-4, max_iter=1000)
    dual:   LinearSVC(C=1, loss="squared_hinge", dual=True,  tol=1e-4, max_iter=1000)

Both are LIBLINEAR: the primal is its trust-region Newton method (`-s 2`), which stops
at ||grad f(w)|| <= tol * max(min(#pos, #neg), 1) / n * ||grad f(0)||; the dual is
coordinate descent (`-s 1`), recorded to show that it stops at its pass limit
(scikit-learn warns that it failed to converge). LinearSVC appends a constant feature 1
for the intercept (intercept_scaling=1), so the bias is regularised like the weights,
as in nnmend. For each class k the primal objective is recomputed here in float64 from
coef_ and intercept_:

    P_k = 1/2 (|w_k|^2 + b_k^2) + C * sum_i max(0, 1 - y_ik (w_k . x_i + b_k))^2,
    y_ik = +1 if label_i == k else -1.

Writes fixtures/reference/svm_overlap.json with, per solver: the per-class and total
objective, n_iter, whether scikit-learn warned about convergence, and the train and
test accuracy.

Needs: pip install numpy scikit-learn
Run from the project root (after tools/fixtures/make_svm_fixture.py):
    python3 tools/reference/svm_primal_reference.py
"""

import json
import os
import warnings

import numpy as np
import sklearn
from sklearn.exceptions import ConvergenceWarning
from sklearn.svm import LinearSVC

DATA = "fixtures/svm-overlap.npz"
OUT = "fixtures/reference/svm_overlap.json"
C, TOL, MAX_ITER = 1.0, 1e-4, 1000


def objectives(model, x, y):
    x = x.astype(np.float64)
    out = []
    for k in range(model.coef_.shape[0]):
        w, b = model.coef_[k].astype(np.float64), float(model.intercept_[k])
        yk = np.where(y == k, 1.0, -1.0)
        slack = np.maximum(0.0, 1.0 - yk * (x @ w + b))
        out.append(float(0.5 * (w @ w + b * b) + C * np.sum(slack**2)))
    return out


def main():
    data = np.load(DATA)
    xtr, ytr, xte, yte = data["x_train"], data["y_train"], data["x_test"], data["y_test"]
    result = {
        "description": "sklearn LinearSVC (one-vs-rest, squared hinge) on fixtures/svm-overlap.npz",
        "sklearn_version": sklearn.__version__,
        "C": C,
        "tol": TOL,
        "max_iter": MAX_ITER,
        "intercept_scaling": 1.0,
        "n_train": int(len(ytr)),
        "n_test": int(len(yte)),
        "n_features": int(xtr.shape[1]),
    }
    for name, dual in (("primal", False), ("dual", True)):
        model = LinearSVC(C=C, loss="squared_hinge", dual=dual, tol=TOL, max_iter=MAX_ITER)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(xtr, ytr)
        per_class = objectives(model, xtr, ytr)
        result[name] = {
            "n_iter": int(model.n_iter_),
            "converged": not any(issubclass(w.category, ConvergenceWarning) for w in caught),
            "per_class_objective": per_class,
            "objective": float(sum(per_class)),
            "train_accuracy": float(np.mean(model.predict(xtr) == ytr)),
            "test_accuracy": float(np.mean(model.predict(xte) == yte)),
        }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    for name in ("primal", "dual"):
        r = result[name]
        print(f"{name}: objective {r['objective']:.6f} n_iter {r['n_iter']} converged {r['converged']} "
              f"test {r['test_accuracy']:.4f}")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

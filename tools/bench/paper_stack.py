"""The seed paper's MNIST experiment in the seed paper's own stack (PyTorch,
scikit-learn, FGSM, cvxopt), step for step as `nnmend run` does it, for comparison.

Guidotti & Leofante (2020) used PyTorch, scikit-learn, Foolbox (FGSM) and cvxopt.
Here FGSM is written out in PyTorch (one signed-gradient step of the cross-entropy,
clipped to [0, 1]), which is what Foolbox's FGSM does for an L-inf radius.

Needs the Debian `/usr/bin/python3` with PyTorch 1.13 (CPU), onnx and numpy, plus two
Debian packages installed for this benchmark only:
    apt-get install -y python3-sklearn python3-cvxopt     # scikit-learn 1.2.1, cvxopt 1.3.0
(they pull in OpenBLAS, which then becomes the system's libblas.so.3 through
update-alternatives).

Run from the project root:
    /usr/bin/python3 tools/bench/paper_stack.py [--model fixtures/mnist_paper.onnx]
        [--data ../shared/datasets/mnist] [--train-limit N] [--test-limit N]
        [--eps 0.05,0.1] [--repair-samples 1] [--kh-train N] [--threads 2]
        [--seed 0] [--batch 500] [--check-full-test] [--json-out FILE] [--dump-lp PREFIX]

Steps (the names are the phases of `timings`):
- load: MNIST IDX(.gz), the first --train-limit training and --test-limit test images,
  pixels / 255, no mean/std; the MNIST-NN of tools/train/train_mnist.py with the weights of
  the ONNX file's initializers (their names are the module's state_dict keys).
- features: the output of the last MaxPool, flattened (800 values), for the training
  and test images.
- fit_lh: LH, scikit-learn LinearSVC(C=1, squared hinge, tol=1e-4, dual=True,
  max_iter=1000), one-vs-rest, on the training features.
- fit_kh: KH, SVC(kernel="rbf", gamma="scale", C=1) on the first --kh-train training
  features (all by default; 0 skips KH).
- then for each eps:
  attack_nn / attack_lh: FGSM against NN (the whole network) and against LH (the
  extractor, then the LinearSVC weights as a linear layer) on the test images. An image
  is replaced by its adversarial example when the model classified it right and the
  example is classified wrong; the others stay clean. These are NADV and HADV.
  repair_samples: FGSM against LH on the training images, batch by batch, until
  --repair-samples successful ones are found (the first ones, in data order).
  repair_lp: the paper's LP (eq. 3), the formulation of `nnmend repair --mode paper`
  (src/repair/paper.rs; tools/reference/lp_reference.py), per class i with weights w_i, bias b_i
  (unchanged), repair samples x_s (features of the adversarial images) and targets
  y_s = LH's decision values on their clean originals, residual r_s = y_s - (w_i.x_s + b_i):
      minimise  sum_j (gamma+_j + gamma-_j) + sum_s delta_s
      subject to  x_s.(gamma+ - gamma-) - delta_s <= r_s,
                 -x_s.(gamma+ - gamma-) - delta_s <= -r_s,   gamma+, gamma-, delta >= 0
  solved by cvxopt.solvers.lp (sparse G, nonnegativity as -I rows). The objective is
  the sum of the classes' optima. RLH = LH with W + (gamma+ - gamma-).
  attack_rlh: FGSM against RLH on the test images: RHADV.
  evaluate: NN, LH, KH, RLH on Data, NADV, HADV, RHADV. The features of a set are the
  clean test features with the replaced rows re-extracted; NN is its head on them
  (NN = head o extractor). KH is run on the replaced rows only, and keeps its clean
  predictions for the others (it is the slow model; the answer is the same).
  efficacy: share of the repair samples RLH classifies right; drawdown: LH's minus
  RLH's accuracy on Data; generalisation: share of HADV's adversarial examples
  (the replaced rows) RLH classifies right.

Output: a table on stdout, progress on stderr, and with --json-out a JSON file:
{"cells": [{"model", "test_set", "eps", "accuracy"}], "repair": [per eps: eps, samples,
objective, seconds, status, ...], "timings": {phase: seconds}, "versions": {...}, ...}.
Models NN, LH, KH, RLH and test sets Data, NADV, HADV, RHADV, as in `nnmend run`'s
report.json; Data cells are repeated at every eps.

--threads N (default 2) sets torch's intra-op threads and OMP/OpenBLAS/MKL threads,
before numpy and torch are imported.
"""

import argparse
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=os.path.join(ROOT, "fixtures/mnist_paper.onnx"))
    ap.add_argument("--data", default=os.path.join(ROOT, "../shared/datasets/mnist"))
    ap.add_argument("--train-limit", type=int, help="use the first N training images (default all)")
    ap.add_argument("--test-limit", type=int, help="use the first N test images (default all)")
    ap.add_argument("--eps", default="0.05,0.1", help="comma list of FGSM radii in [0, 1] pixel space")
    ap.add_argument("--repair-samples", type=int, default=1)
    ap.add_argument("--kh-train", type=int, help="fit KH on the first N training features (default all; 0 skips KH)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="torch's and LinearSVC's random seed")
    ap.add_argument("--batch", type=int, default=500, help="images per PyTorch batch")
    ap.add_argument("--check-full-test", action="store_true",
                    help="also score NN on all 10,000 test images and compare with fixtures/mnist_paper.json")
    ap.add_argument("--json-out", help="write the results here")
    ap.add_argument("--dump-lp", metavar="PREFIX",
                    help="write each eps's LP as PREFIX_eps<E>.json in `nnmend repair --dump-lp`'s format "
                         "(for tools/reference/lp_reference.py or `nnmend lp`)")
    args = ap.parse_args(argv)
    try:
        args.eps = [float(e) for e in args.eps.split(",") if e.strip()]
    except ValueError:
        ap.error(f"--eps: not a comma list of numbers: {args.eps!r}")
    if not args.eps or any(not 0.0 <= e <= 1.0 for e in args.eps):
        ap.error("--eps: give one or more radii in [0, 1]")
    if args.threads < 1 or args.repair_samples < 1:
        ap.error("--threads and --repair-samples must be at least 1")
    return args


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    # Before numpy/torch load their BLAS and OpenMP runtimes.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402
from onnx import numpy_helper  # noqa: E402
from torch.nn import functional as F  # noqa: E402

TOOLS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(TOOLS, folder) for folder in ("common", "train")]
from mnist_idx import load_split, to_nchw_float  # noqa: E402
from train_mnist import MnistNN  # noqa: E402

MODELS = ("NN", "LH", "KH", "RLH")
SETS = ("Data", "NADV", "HADV", "RHADV")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Timer:
    """Seconds per phase, summed over the phase's runs."""

    def __init__(self):
        self.seconds = {}

    def phase(self, name):
        timer = self

        class _Ctx:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                took = time.perf_counter() - self.t0
                timer.seconds[name] = timer.seconds.get(name, 0.0) + took
                log(f"  {name}: {took:.2f} s")

        return _Ctx()


def load_model(path):
    """MnistNN with the ONNX file's initializers as its state_dict."""
    model = onnx.load(path)
    state = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in model.graph.initializer}
    net = MnistNN()
    missing = set(net.state_dict()) - set(state)
    if missing:
        raise SystemExit(f"{path}: no initializer for {sorted(missing)}; is it tools/train/train_mnist.py's MNIST-NN?")
    net.load_state_dict({k: state[k] for k in net.state_dict()})
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def extract(net, x, batch):
    """Features at the last MaxPool, flattened: float32 [N, 800]."""
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out.append(net.features(x[i : i + batch]).flatten(1))
    return torch.cat(out) if out else torch.zeros(0, 800)


def fgsm(net, head, x, y, eps, batch, stop_after=None):
    """FGSM against head o extractor on images x [N,1,28,28] with labels y.

    Returns (adversarial images, their features, success mask, clean predictions,
    images attacked). A success: clean prediction right, adversarial one wrong. With
    stop_after, batches stop once that many successes are found."""
    advs, feats, succ, clean_pred = [], [], [], []
    done = 0
    for i in range(0, len(x), batch):
        xb = x[i : i + batch].clone().requires_grad_(True)
        yb = y[i : i + batch]
        logits = head(net.features(xb).flatten(1))
        loss = F.cross_entropy(logits, yb, reduction="sum")
        (grad,) = torch.autograd.grad(loss, xb)
        with torch.no_grad():
            adv = (xb + eps * grad.sign()).clamp_(0.0, 1.0)
            f_adv = net.features(adv).flatten(1)
            pred_adv = head(f_adv).argmax(1)
            pred = logits.argmax(1)
            s = (pred == yb) & (pred_adv != yb)
        advs.append(adv.detach())
        feats.append(f_adv)
        succ.append(s)
        clean_pred.append(pred)
        done += len(yb)
        if stop_after is not None and int(torch.cat(succ).sum()) >= stop_after:
            break
    return torch.cat(advs), torch.cat(feats), torch.cat(succ), torch.cat(clean_pred), done


def linear_head(w, b):
    w = torch.as_tensor(w, dtype=torch.float32)
    b = torch.as_tensor(b, dtype=torch.float32)
    return lambda f: f @ w.T + b


def repair_lp(x, r):
    """The paper's LP for every class with cvxopt: x [S, d] repair features (float64),
    r [S, k] residuals. Returns (gamma [k, d], per-class list of dicts)."""
    import cvxopt
    from cvxopt import solvers

    solvers.options["show_progress"] = False
    s, d = x.shape
    k = r.shape[1]
    n = 2 * d + s
    # G v <= h with v = [gamma+, gamma-, delta]:
    #   [ X  -X  -I ] v <= r,   [ -X  X  -I ] v <= -r,   -I v <= 0
    rows, cols, vals = [], [], []
    nz_s, nz_j = np.nonzero(x)
    xv = x[nz_s, nz_j]
    for block, sign in ((0, 1.0), (1, -1.0)):
        row0 = block * s
        for part, psign in ((0, 1.0), (1, -1.0)):
            rows.append(row0 + nz_s)
            cols.append(part * d + nz_j)
            vals.append(sign * psign * xv)
        rows.append(row0 + np.arange(s))
        cols.append(2 * d + np.arange(s))
        vals.append(-np.ones(s))
    rows.append(2 * s + np.arange(n))
    cols.append(np.arange(n))
    vals.append(-np.ones(n))
    rows, cols, vals = (np.concatenate(a) for a in (rows, cols, vals))
    G = cvxopt.spmatrix(vals.tolist(), rows.tolist(), cols.tolist(), size=(2 * s + n, n))
    c = cvxopt.matrix(np.ones(n))
    gamma = np.zeros((k, d))
    classes = []
    for i in range(k):
        h = cvxopt.matrix(np.concatenate([r[:, i], -r[:, i], np.zeros(n)]))
        t0 = time.perf_counter()
        sol = solvers.lp(c, G, h)
        took = time.perf_counter() - t0
        v = np.array(sol["x"]).ravel() if sol["x"] is not None else None
        obj = sol["primal objective"]
        if v is not None:
            gamma[i] = v[:d] - v[d : 2 * d]
        classes.append({
            "class": i,
            "status": sol["status"],
            "objective": float(obj) if obj is not None else None,
            "gap": sol.get("gap"),
            "iterations": sol.get("iterations"),
            "seconds": took,
        })
    return gamma, classes


def accuracy(pred, y):
    return float((np.asarray(pred) == np.asarray(y)).mean()) if len(y) else 0.0


def main(args):
    import cvxopt
    import sklearn
    from sklearn.svm import SVC, LinearSVC

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    timer = Timer()
    wall0 = time.perf_counter()

    log("load")
    with timer.phase("load"):
        tr_img, tr_lab = load_split("train", args.data, args.train_limit)
        te_img, te_lab = load_split("test", args.data, args.test_limit)
        x_tr = torch.from_numpy(to_nchw_float(tr_img))
        y_tr = torch.from_numpy(tr_lab.astype(np.int64))
        x_te = torch.from_numpy(to_nchw_float(te_img))
        y_te = torch.from_numpy(te_lab.astype(np.int64))
        net = load_model(args.model)
    log(f"{len(x_tr)} training and {len(x_te)} test images")

    full_check = None
    if args.check_full_test:
        # Not a timed phase of the experiment.
        img, lab = load_split("test", args.data)
        xf = torch.from_numpy(to_nchw_float(img))
        with torch.no_grad():
            pred = torch.cat([net(xf[i : i + args.batch]).argmax(1) for i in range(0, len(xf), args.batch)])
        acc = accuracy(pred.numpy(), lab)
        ref_path = os.path.splitext(args.model)[0] + ".json"
        ref = None
        if os.path.exists(ref_path):
            with open(ref_path) as f:
                ref = json.load(f).get("test_accuracy")
        full_check = {"n": len(lab), "accuracy": acc, "recorded": ref, "equal": ref is not None and abs(acc - ref) < 1e-12}
        log(f"NN on all {len(lab)} test images: {acc:.4f} (recorded {ref})")

    with timer.phase("features"):
        f_tr = extract(net, x_tr, args.batch)
        f_te = extract(net, x_te, args.batch)
    f_tr64 = f_tr.numpy().astype(np.float64)
    f_te64 = f_te.numpy().astype(np.float64)

    log("fit LH (LinearSVC)")
    with timer.phase("fit_lh"):
        lh = LinearSVC(C=1.0, loss="squared_hinge", tol=1e-4, dual=True, max_iter=1000, random_state=args.seed)
        lh.fit(f_tr64, tr_lab)
    w_lh, b_lh = lh.coef_.copy(), lh.intercept_.copy()
    lh_iter = int(lh.n_iter_)

    kh = None
    kh_n = len(f_tr64) if args.kh_train is None else min(args.kh_train, len(f_tr64))
    if kh_n > 0:
        log(f"fit KH (SVC rbf) on {kh_n} training features")
        with timer.phase("fit_kh"):
            kh = SVC(kernel="rbf", gamma="scale", C=1.0)
            kh.fit(f_tr64[:kh_n], tr_lab[:kh_n])
        log(f"KH: {int(kh.n_support_.sum())} support vectors")

    nn_head = lambda f: net.head(f)  # noqa: E731
    lh_head = linear_head(w_lh, b_lh)
    y_np = te_lab.astype(np.int64)

    def scores_linear(f64, w, b):
        return f64 @ w.T + b

    with timer.phase("evaluate"):
        with torch.no_grad():
            clean_pred = {"NN": net.head(f_te).argmax(1).numpy(), "LH": scores_linear(f_te64, w_lh, b_lh).argmax(1)}
        if kh is not None:
            clean_pred["KH"] = kh.predict(f_te64)

    cells, repairs = [], []
    for eps in args.eps:
        log(f"eps = {eps}")
        sets = {}  # name -> (replaced mask, features of replaced rows [float32 tensor])
        with timer.phase("attack_nn"):
            _, fa, ok, _, _ = fgsm(net, nn_head, x_te, y_te, eps, args.batch)
            sets["NADV"] = (ok.numpy(), fa[ok])
        with timer.phase("attack_lh"):
            _, fa, ok, _, _ = fgsm(net, lh_head, x_te, y_te, eps, args.batch)
            sets["HADV"] = (ok.numpy(), fa[ok])

        with timer.phase("repair_samples"):
            _, fa_tr, ok_tr, _, attacked = fgsm(net, lh_head, x_tr, y_tr, eps, args.batch, stop_after=args.repair_samples)
            idx = torch.nonzero(ok_tr).flatten()[: args.repair_samples].numpy()
            x_rep = fa_tr[idx].numpy().astype(np.float64)
            clean_rep = f_tr64[idx]
        s = len(idx)
        log(f"  {s} repair samples from {attacked} training images attacked")

        record = {"eps": eps, "samples": int(s), "train_attacked": int(attacked)}
        if s > 0:
            targets = scores_linear(clean_rep, w_lh, b_lh)
            before = scores_linear(x_rep, w_lh, b_lh)
            if args.dump_lp:
                with open(f"{args.dump_lp}_eps{eps}.json", "w") as f:
                    json.dump({"mode": "paper", "repair_bias": False, "x": x_rep.tolist(),
                               "classes": [{"r": c.tolist()} for c in (targets - before).T]}, f)
            with timer.phase("repair_lp"):
                t0 = time.perf_counter()
                gamma, classes = repair_lp(x_rep, targets - before)
                lp_seconds = time.perf_counter() - t0
            w_r = w_lh + gamma
            statuses = {c["status"] for c in classes}
            objs = [c["objective"] for c in classes]
            record.update({
                "objective": sum(objs) if None not in objs else None,
                "seconds": lp_seconds,
                "status": "optimal" if statuses == {"optimal"} else ",".join(sorted(statuses)),
                "l1": float(np.abs(gamma).sum()),
                "linf": float(np.abs(gamma).max()),
                "lp": {"variables": 10 * (2 * x_rep.shape[1] + s), "constraints": 10 * 2 * s,
                       "nonzeros": 10 * (4 * int(np.count_nonzero(x_rep)) + 2 * s)},
                "classes": classes,
                "efficacy_before": accuracy(before.argmax(1), tr_lab[idx]),
                "efficacy": accuracy(scores_linear(x_rep, w_r, b_lh).argmax(1), tr_lab[idx]),
            })
            log(f"  LP {record['status']}: objective {record['objective']:.6f}, {lp_seconds:.2f} s, "
                f"|dW|1 {record['l1']:.4f}, efficacy {record['efficacy']:.4f}")
        else:
            w_r = w_lh.copy()
            record.update({"objective": None, "seconds": 0.0, "status": "no_samples", "efficacy": None})
            log("  no repair sample found; RLH = LH")
        rlh_head = linear_head(w_r, b_lh)

        with timer.phase("attack_rlh"):
            _, fa, ok, _, _ = fgsm(net, rlh_head, x_te, y_te, eps, args.batch)
            sets["RHADV"] = (ok.numpy(), fa[ok])

        with timer.phase("evaluate"):
            rlh_clean = scores_linear(f_te64, w_r, b_lh).argmax(1)
            acc = {}
            for name in SETS:
                preds = {"NN": clean_pred["NN"].copy(), "LH": clean_pred["LH"].copy(), "RLH": rlh_clean.copy()}
                if kh is not None:
                    preds["KH"] = clean_pred["KH"].copy()
                if name != "Data":
                    mask, fa = sets[name]
                    if mask.any():
                        fa64 = fa.numpy().astype(np.float64)
                        with torch.no_grad():
                            preds["NN"][mask] = net.head(fa).argmax(1).numpy()
                        preds["LH"][mask] = scores_linear(fa64, w_lh, b_lh).argmax(1)
                        preds["RLH"][mask] = scores_linear(fa64, w_r, b_lh).argmax(1)
                        if kh is not None:
                            preds["KH"][mask] = kh.predict(fa64)
                for model in MODELS:
                    if model in preds:
                        a = accuracy(preds[model], y_np)
                        acc[(model, name)] = a
                        cells.append({"model": model, "test_set": name, "eps": eps, "accuracy": a})
            mask, fa = sets["HADV"]
            held = int(mask.sum())
            fixed = scores_linear(fa.numpy().astype(np.float64), w_r, b_lh).argmax(1) == y_np[mask] if held else []
            record["drawdown"] = acc[("LH", "Data")] - acc[("RLH", "Data")]
            record["generalisation"] = float(np.mean(fixed)) if held else None
            record["held_out"] = held
            record["adversarial"] = {n: int(sets[n][0].sum()) for n in ("NADV", "HADV", "RHADV")}
        repairs.append(record)

    total = time.perf_counter() - wall0
    timings = dict(timer.seconds)
    timings["total"] = total

    # The table.
    print(f"MNIST, {len(x_tr)} train / {len(x_te)} test images; FGSM; paper LP with "
          f"{args.repair_samples} repair sample(s); KH on {kh_n} training features")
    header = "| model | " + " | ".join(f"{t} ε={e}" for e in args.eps for t in SETS) + " |"
    print(header)
    print("| --- " * (1 + len(args.eps) * len(SETS)) + "|")
    for model in MODELS:
        row = [f"| {model} "]
        for e in args.eps:
            for t in SETS:
                a = next((c["accuracy"] for c in cells if c["model"] == model and c["test_set"] == t and c["eps"] == e), None)
                row.append("| — " if a is None else f"| {100 * a:.2f}% ")
        print("".join(row) + "|")
    print()
    for r in repairs:
        obj = "—" if r["objective"] is None else f"{r['objective']:.6f}"
        eff = "—" if r["efficacy"] is None else f"{100 * r['efficacy']:.1f}%"
        gen = "—" if r.get("generalisation") is None else f"{100 * r['generalisation']:.1f}% of {r['held_out']}"
        print(f"ε={r['eps']}: repair {r['status']} ({r['samples']} sample(s)), objective {obj}, "
              f"{r['seconds']:.3f} s; efficacy {eff}, drawdown {100 * r['drawdown']:.2f} pp, generalisation {gen}")
    print("timings: " + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()))

    if args.json_out:
        doc = {
            "cells": cells,
            "repair": repairs,
            "timings": timings,
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "sklearn": sklearn.__version__,
                "cvxopt": cvxopt.__version__,
                "numpy": np.__version__,
                "onnx": onnx.__version__,
            },
            "settings": {
                "model": args.model, "data": args.data, "train": len(x_tr), "test": len(x_te),
                "eps": args.eps, "repair_samples": args.repair_samples, "kh_train": kh_n,
                "threads": args.threads, "seed": args.seed, "batch": args.batch,
            },
            "lh": {"n_iter": lh_iter, "max_iter": 1000},
            "kh": None if kh is None else {"train": kh_n, "support_vectors": int(kh.n_support_.sum())},
            "full_test_check": full_check,
        }
        tmp = args.json_out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
        os.replace(tmp, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))

"""Record scipy's Wilcoxon signed-rank p-values for the Rust tests of feature selection.

Needs the pyenv `python3` with numpy and scipy (1.17 here).

Run from the project root:
    python3 tools/reference/wilcoxon_reference.py

Writes fixtures/reference/wilcoxon.json: a list of cases, each with `x` and `y` (paired
samples), and scipy's `statistic` and `pvalue` from
`scipy.stats.wilcoxon(x, y)` with its defaults (two-sided, zero_method="wilcox", no
continuity correction, method="auto"). The cases cover each branch "auto" takes: the
exact distribution (n <= 50, no ties, no zeros), the exact permutation distribution
(n <= 13 with ties or zeros), and the normal approximation with tie correction
(n > 50, or ties or zeros with n > 13), plus feature-like data: non-negative values
with many exact zeros and repeated values.
"""

import json

import numpy as np
import scipy
from scipy.stats import wilcoxon


def case(name, x, y):
    res = wilcoxon(x, y)
    return {"name": name, "x": [float(v) for v in x], "y": [float(v) for v in y],
            "statistic": float(res.statistic), "pvalue": float(res.pvalue)}


def main():
    rng = np.random.default_rng(2020)
    cases = []
    for n in (1, 2, 5, 12, 20, 37, 50):
        x = rng.normal(size=n)
        cases.append(case(f"exact-n{n}", x, x + rng.normal(0.3, 1.0, size=n)))
    for n in (4, 9, 13):
        x = rng.integers(0, 4, size=n).astype(float)
        y = rng.integers(0, 4, size=n).astype(float)
        cases.append(case(f"permutation-ties-zeros-n{n}", x, y))
    x = np.arange(8, dtype=float)
    cases.append(case("permutation-one-zero-n8", x, x + np.array([0, 1, -2, 3, 4, -5, 6, 7.5])))
    for n in (14, 30, 51, 120, 500):
        # Exact up to 50 (no ties), the normal approximation beyond.
        x = rng.normal(size=n)
        cases.append(case(f"{'exact' if n <= 50 else 'asymptotic'}-n{n}", x, x + rng.normal(-0.1, 1.0, size=n)))
    for n in (40, 300):
        clean = np.maximum(rng.normal(0.2, 1.0, size=n), 0).round(1)
        adv = np.maximum(clean + rng.normal(0.05, 0.5, size=n), 0).round(1)
        cases.append(case(f"features-ties-zeros-n{n}", clean, adv))
    with open("fixtures/reference/wilcoxon.json", "w") as f:
        json.dump({"scipy": scipy.__version__, "cases": cases}, f, indent=1)
    print(f"{len(cases)} cases written")


if __name__ == "__main__":
    main()

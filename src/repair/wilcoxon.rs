//! The Wilcoxon signed-rank test, for choosing which features a repair may change.
//!
//! For each feature, the paired values on the clean images and on their adversarial
//! examples are compared with a two-sided signed-rank test; features with p below a
//! threshold (0.1 in the seed paper) are "affected by the attack" and only their
//! weights change. The test follows `scipy.stats.wilcoxon`'s defaults exactly
//! (zero differences dropped, no continuity correction, `method="auto"`):
//! - n ≤ 50 differences, none zero and no ties: the exact null distribution of W⁺;
//! - n ≤ 13 with zeros or ties: the exact permutation distribution (all 2ⁿ signs);
//! - otherwise the normal approximation, with the variance corrected for ties:
//!   σ² = (m(m+1)(2m+1) − Σ(t³ − t)/2) / 24 over the m non-zero differences.

use ndarray::ArrayView2;
use statrs::function::erf::erfc;

/// Which null distribution gave the p-value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// The exact distribution of W⁺.
    Exact,
    /// All sign assignments enumerated.
    Permutation,
    /// The normal approximation.
    Asymptotic,
}

/// One test's result.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Test {
    /// min(W⁺, W⁻).
    pub statistic: f64,
    /// Two-sided p-value (1 when every difference is zero).
    pub pvalue: f64,
    /// The null distribution used.
    pub method: Method,
}

/// Average ranks (1-based) of `values`, and the sizes of the tie groups.
fn ranks(values: &[f64]) -> (Vec<f64>, Vec<usize>) {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut out = vec![0.0; values.len()];
    let mut ties = Vec::new();
    let mut i = 0;
    while i < order.len() {
        let mut j = i + 1;
        while j < order.len() && values[order[j]] == values[order[i]] {
            j += 1;
        }
        let average = (i + 1 + j) as f64 / 2.0;
        for &k in &order[i..j] {
            out[k] = average;
        }
        ties.push(j - i);
        i = j;
    }
    (out, ties)
}

/// The number of subsets of {1, …, m} with each rank sum.
fn subset_sums(m: usize) -> Vec<f64> {
    let top = m * (m + 1) / 2;
    let mut counts = vec![0.0f64; top + 1];
    counts[0] = 1.0;
    for r in 1..=m {
        for k in (r..=top).rev() {
            counts[k] += counts[k - r];
        }
    }
    counts
}

/// The two-sided signed-rank test of the paired samples `x` and `y`.
pub fn signed_rank(x: &[f64], y: &[f64]) -> Test {
    let d: Vec<f64> = x.iter().zip(y).map(|(a, b)| a - b).collect();
    let n = d.len();
    let zeros = d.iter().filter(|v| **v == 0.0).count();
    let nonzero: Vec<f64> = d.iter().copied().filter(|v| *v != 0.0).collect();
    let m = nonzero.len();
    let magnitudes: Vec<f64> = nonzero.iter().map(|v| v.abs()).collect();
    let (r, ties) = ranks(&magnitudes);
    let r_plus: f64 = nonzero.iter().zip(&r).filter(|(v, _)| **v > 0.0).map(|(_, r)| r).sum();
    let r_minus: f64 = nonzero.iter().zip(&r).filter(|(v, _)| **v < 0.0).map(|(_, r)| r).sum();
    let statistic = r_plus.min(r_minus);
    let has_ties = ties.iter().any(|&t| t > 1);
    let method = if n > 50 {
        Method::Asymptotic
    } else if !has_ties && zeros == 0 {
        Method::Exact
    } else if n <= 13 {
        Method::Permutation
    } else {
        Method::Asymptotic
    };
    if m == 0 {
        return Test {
            statistic,
            pvalue: 1.0,
            method,
        };
    }
    let pvalue = match method {
        Method::Asymptotic => {
            let mf = m as f64;
            let tie: f64 = ties.iter().map(|&t| (t * t * t - t) as f64).sum();
            let se = ((mf * (mf + 1.0) * (2.0 * mf + 1.0) - tie / 2.0) / 24.0).sqrt();
            let z = (r_plus - mf * (mf + 1.0) / 4.0) / se;
            erfc(z.abs() / std::f64::consts::SQRT_2)
        }
        Method::Exact => {
            let counts = subset_sums(m);
            let total: f64 = counts.iter().sum();
            // P(W⁺ ≥ ⌊w⌋) and P(W⁺ ≤ ⌈w⌉), as scipy rounds a non-integral statistic.
            let lo = r_plus.floor() as usize;
            let hi = (r_plus.ceil() as usize).min(counts.len() - 1);
            let sf: f64 = counts[lo.min(counts.len())..].iter().sum::<f64>() / total;
            let cdf: f64 = counts[..=hi].iter().sum::<f64>() / total;
            (2.0 * sf.min(cdf)).min(1.0)
        }
        Method::Permutation => {
            let (mut below, mut above) = (0u64, 0u64);
            for signs in 0u64..(1u64 << m) {
                let w: f64 = (0..m).filter(|&i| signs & (1 << i) != 0).map(|i| r[i]).sum();
                below += u64::from(w <= r_plus);
                above += u64::from(w >= r_plus);
            }
            let total = (1u64 << m) as f64;
            (2.0 * (below as f64 / total).min(above as f64 / total)).min(1.0)
        }
    };
    Test {
        statistic,
        pvalue,
        method,
    }
}

/// The test for every feature (column) of the paired `[S, d]` matrices.
pub fn per_feature(clean: ArrayView2<f64>, adversarial: ArrayView2<f64>) -> Vec<Test> {
    clean
        .columns()
        .into_iter()
        .zip(adversarial.columns())
        .map(|(c, a)| signed_rank(&c.to_vec(), &a.to_vec()))
        .collect()
}

/// The features whose p-value is below `threshold`.
pub fn select(clean: ArrayView2<f64>, adversarial: ArrayView2<f64>, threshold: f64) -> Vec<usize> {
    per_feature(clean, adversarial)
        .iter()
        .enumerate()
        .filter(|(_, t)| t.pvalue < threshold)
        .map(|(j, _)| j)
        .collect()
}

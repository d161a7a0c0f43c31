//! Blocks of a Gram matrix: the inner products of every row of one row-major block with
//! every row of another, in 3 × 3 tiles of vector accumulators (AVX2 and FMA where the
//! processor has them, chosen at run time by `pulp`).
//!
//! The interior-point method's S is made of many such blocks, each a few dozen rows by
//! a few dozen, with rows of about a thousand entries: too small for a general matrix
//! product to run at its speed (it packs both operands for each block), and large
//! enough in the inner dimension that a tile's nine sums, kept in registers, amortise
//! their final reductions.

use pulp::{Simd, WithSimd};

/// Rows and columns of a tile.
const TILE: usize = 3;

/// `out[i·nb + h] = Σ_j a[i·w + j] b[h·w + j]` for the `na = a.len() / w` rows of `a`
/// and the `nb = b.len() / w` rows of `b`. Each sum is accumulated in vector lanes over
/// the multiples of the lane count, the lanes summed in a fixed order, then the rest of
/// the row added in order, so that the result does not depend on the rows around it.
///
/// # Panics
/// When a length is not a multiple of `w`, or `out` is not `na · nb` long.
pub(super) fn products(a: &[f64], b: &[f64], w: usize, out: &mut [f64]) {
    assert!(w > 0 && a.len() % w == 0 && b.len() % w == 0, "rows of width {w}");
    assert_eq!(out.len(), (a.len() / w) * (b.len() / w), "one product per pair of rows");
    pulp::Arch::new().dispatch(Products { a, b, w, out });
}

struct Products<'a> {
    a: &'a [f64],
    b: &'a [f64],
    w: usize,
    out: &'a mut [f64],
}

impl WithSimd for Products<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Self { a, b, w, out } = self;
        let (na, nb) = (a.len() / w, b.len() / w);
        let mut i = 0;
        while i < na {
            let mr = (na - i).min(TILE);
            let mut h = 0;
            while h < nb {
                let nr = (nb - h).min(TILE);
                match (mr, nr) {
                    (3, 3) => tile::<S, 3, 3>(simd, a, b, w, i, h, nb, out),
                    (3, 2) => tile::<S, 3, 2>(simd, a, b, w, i, h, nb, out),
                    (3, 1) => tile::<S, 3, 1>(simd, a, b, w, i, h, nb, out),
                    (2, 3) => tile::<S, 2, 3>(simd, a, b, w, i, h, nb, out),
                    (2, 2) => tile::<S, 2, 2>(simd, a, b, w, i, h, nb, out),
                    (2, 1) => tile::<S, 2, 1>(simd, a, b, w, i, h, nb, out),
                    (1, 3) => tile::<S, 1, 3>(simd, a, b, w, i, h, nb, out),
                    (1, 2) => tile::<S, 1, 2>(simd, a, b, w, i, h, nb, out),
                    _ => tile::<S, 1, 1>(simd, a, b, w, i, h, nb, out),
                }
                h += nr;
            }
            i += mr;
        }
    }
}

/// The `MR × NR` products of rows `i..` of `a` with rows `h..` of `b`, into `out`
/// (row stride `nb`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tile<S: Simd, const MR: usize, const NR: usize>(
    simd: S,
    a: &[f64],
    b: &[f64],
    w: usize,
    i: usize,
    h: usize,
    nb: usize,
    out: &mut [f64],
) {
    let rows_a: [&[f64]; MR] = std::array::from_fn(|r| &a[(i + r) * w..(i + r + 1) * w]);
    let rows_b: [&[f64]; NR] = std::array::from_fn(|r| &b[(h + r) * w..(h + r + 1) * w]);
    let heads_a: [&[S::f64s]; MR] = std::array::from_fn(|r| S::as_simd_f64s(rows_a[r]).0);
    let heads_b: [&[S::f64s]; NR] = std::array::from_fn(|r| S::as_simd_f64s(rows_b[r]).0);
    // MR, NR ≥ 1: every row has the same number of whole vectors, then the same tail.
    let (chunks, done) = (heads_a[0].len(), w - S::as_simd_f64s(rows_a[0]).1.len());
    let zero = simd.splat_f64s(0.0);
    let mut acc = [[zero; NR]; MR];
    for c in 0..chunks {
        let vb: [S::f64s; NR] = std::array::from_fn(|r| heads_b[r][c]);
        for (acc_r, head) in acc.iter_mut().zip(&heads_a) {
            let va = head[c];
            for (slot, &vb) in acc_r.iter_mut().zip(&vb) {
                *slot = simd.mul_add_f64s(va, vb, *slot);
            }
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        for (t, &v) in acc_r.iter().enumerate() {
            let tail = rows_a[r][done..].iter().zip(&rows_b[t][done..]);
            out[(i + r) * nb + h + t] = tail.fold(simd.reduce_sum_f64s(v), |s, (x, y)| x.mul_add(*y, s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn every_tile_shape_and_tail_matches_the_plain_sums() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for (na, nb, w) in [(1, 1, 1), (7, 5, 13), (3, 3, 8), (10, 4, 801), (2, 11, 3), (6, 6, 4)] {
            let a: Vec<f64> = (0..na * w).map(|_| rng.random_range(-1.0..1.0)).collect();
            let b: Vec<f64> = (0..nb * w).map(|_| rng.random_range(-1.0..1.0)).collect();
            let mut out = vec![f64::NAN; na * nb];
            products(&a, &b, w, &mut out);
            for i in 0..na {
                for h in 0..nb {
                    let row = |m: &[f64], r: usize| m[r * w..(r + 1) * w].to_vec();
                    let plain: f64 = row(&a, i).iter().zip(row(&b, h)).map(|(x, y)| x * y).sum();
                    let scale: f64 = row(&a, i).iter().zip(row(&b, h)).map(|(x, y)| (x * y).abs()).sum();
                    let got = out[i * nb + h];
                    assert!(
                        (got - plain).abs() <= 1e-14 * scale.max(1.0),
                        "({i}, {h}) of {na}×{nb}×{w}: {got} against {plain}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_product_does_not_depend_on_the_rows_around_it() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let w = 37;
        let a: Vec<f64> = (0..8 * w).map(|_| rng.random_range(-1.0..1.0)).collect();
        let b: Vec<f64> = (0..5 * w).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut all = vec![0.0; 8 * 5];
        products(&a, &b, w, &mut all);
        for i in 0..8 {
            for h in 0..5 {
                let mut one = [0.0];
                products(&a[i * w..(i + 1) * w], &b[h * w..(h + 1) * w], w, &mut one);
                assert_eq!(one[0].to_bits(), all[i * 5 + h].to_bits(), "({i}, {h})");
            }
        }
    }
}

//! Vector–Jacobian products of ReduceSum, ReduceMean and ReduceMax, over any axes but
//! the batch.
//!
//! With `A` the reduced axes and `|A|` the number of elements each output reduces:
//! - **ReduceSum.** `y = Σ_A x`, so `∂L/∂x = ∂L/∂y`, broadcast back over `A` by a Mul
//!   with a constant of ones, full-sized along `A` and 1-sized along the other axes.
//! - **ReduceMean.** `y = (1/|A|) Σ_A x`, so `∂L/∂x = ∂L/∂y / |A|`, broadcast back
//!   the same way with `1/|A|` in place of the ones.
//! - **ReduceMax.** `y = max_A x`, so `∂L/∂y` goes to the maximum of each reduced
//!   block. As for GlobalMaxPool, a tie goes to the first maximum in row-major order
//!   over `A`: the reduced axes are moved last and merged, ArgMax picks the first
//!   maximum, and an Equal against the positions `0 … |A|−1` masks the gradient.
//!
//! `axes` is an attribute up to opset 17 (ReduceSum: 12) and a constant input from
//! opset 18 (ReduceSum: 13);
//! `keepdims = 0` drops the reduced axes, which the gradient puts back as ones first.

use super::super::proto::NodeProto;
use super::super::OnnxError;
use super::builder::{attr_int, attr_ints, axis, input, int, ints};
use super::{unsupported, Ctx};

/// The reduced axes of `node`, sorted: `None` for a `noop_with_empty_axes` reduction
/// over no axes, which is the identity.
fn reduced_axes(ctx: &Ctx, node: &NodeProto, rank: usize) -> Result<Option<Vec<usize>>, OnnxError> {
    let given = match attr_ints(node, "axes")? {
        Some(a) => a,
        None => match node.input.get(1).filter(|s| !s.is_empty()) {
            Some(a) => ctx.const_i64(node, a, "axes")?,
            None => Vec::new(),
        },
    };
    if given.is_empty() {
        if attr_int(node, "noop_with_empty_axes", 0)? != 0 {
            return Ok(None);
        }
        return Err(unsupported(
            node,
            "it reduces every axis, the batch among them, which cannot be differentiated per sample",
        ));
    }
    let mut axes = given
        .iter()
        .map(|&a| axis(node, a, rank))
        .collect::<Result<Vec<_>, _>>()?;
    axes.sort_unstable();
    axes.dedup();
    if axes.first() == Some(&0) {
        return Err(unsupported(
            node,
            "reducing over the batch axis cannot be differentiated per sample",
        ));
    }
    Ok(Some(axes))
}

/// What both rules start from.
struct Reduction {
    /// The input's shape (batch of [`super::PROBE_BATCH`]).
    shape: Vec<usize>,
    /// The reduced axes, sorted, never the batch.
    axes: Vec<usize>,
    /// `dy` with the reduced axes back as ones, `[N, …]` of the input's rank.
    dy: String,
}

/// The reduction `node` performs; `None` for the identity.
fn prepare(ctx: &mut Ctx, node: &NodeProto, dy: &str) -> Result<Option<Reduction>, OnnxError> {
    let shape = ctx.shape(node, input(node, 0))?;
    let Some(axes) = reduced_axes(ctx, node, shape.len())? else {
        return Ok(None);
    };
    if axes.iter().any(|&a| shape[a] == 0) {
        return Err(unsupported(node, "it reduces an empty axis"));
    }
    let dy = if attr_int(node, "keepdims", 1)? != 0 {
        dy.to_string()
    } else {
        let mut kept = vec![-1i64];
        kept.extend((1..shape.len()).map(|a| if axes.contains(&a) { 1 } else { shape[a] as i64 }));
        ctx.b.reshape(dy, &kept)
    };
    Ok(Some(Reduction { shape, axes, dy }))
}

/// ReduceSum (`mean` false) and ReduceMean (`mean` true): `dy` spread back over the
/// reduced axes, each element's share 1 or `1/|A|`.
pub(super) fn reduce_sum_or_mean(
    ctx: &mut Ctx,
    node: &NodeProto,
    dy: &str,
    mean: bool,
) -> Result<Vec<Option<String>>, OnnxError> {
    let Some(Reduction { shape, axes, dy }) = prepare(ctx, node, dy)? else {
        return Ok(vec![Some(dy.to_string())]);
    };
    let count: usize = axes.iter().map(|&a| shape[a]).product();
    let share = if mean { 1.0 / count as f32 } else { 1.0 };
    // The share along the reduced axes, 1 along the others: the Mul broadcasts dy back.
    let dims: Vec<usize> = (1..shape.len())
        .map(|a| if axes.contains(&a) { shape[a] } else { 1 })
        .collect();
    let cells: usize = dims.iter().product();
    let shares = ctx.b.f32s("reduce_share", &dims, &vec![share; cells]);
    Ok(vec![Some(ctx.b.mul(&dy, &shares))])
}

pub(super) fn reduce_max(ctx: &mut Ctx, node: &NodeProto, dy: &str) -> Result<Vec<Option<String>>, OnnxError> {
    let x = input(node, 0).to_string();
    let Some(Reduction { shape, axes, dy }) = prepare(ctx, node, dy)? else {
        return Ok(vec![Some(dy.to_string())]);
    };
    let kept: Vec<usize> = (1..shape.len()).filter(|a| !axes.contains(a)).collect();
    let mut perm: Vec<usize> = vec![0];
    perm.extend(&kept);
    perm.extend(&axes);
    let moved = perm.iter().enumerate().any(|(i, &p)| i != p);
    let xt = if moved {
        let p: Vec<i64> = perm.iter().map(|&a| a as i64).collect();
        ctx.b.op("Transpose", &[&x], vec![ints("perm", &p)])
    } else {
        x
    };
    let cells: usize = axes.iter().map(|&a| shape[a]).product();
    let mut grouped = vec![-1i64];
    grouped.extend(kept.iter().map(|&a| shape[a] as i64));
    let mut flat_shape = grouped.clone();
    flat_shape.push(cells as i64);
    let flat = ctx.b.reshape(&xt, &flat_shape);
    let last = kept.len() as i64 + 1;
    let arg = ctx
        .b
        .op("ArgMax", &[&flat], vec![int("axis", last), int("keepdims", 1)]);
    let range: Vec<i64> = (0..cells as i64).collect();
    let positions = ctx.b.i64s("cell_index", &[cells], &range);
    let hit = ctx.b.op("Equal", &[&arg, &positions], vec![]);
    let mask = ctx.b.cast_float(&hit);
    let mut column = grouped.clone();
    column.push(1);
    let dy = ctx.b.reshape(&dy, &column);
    let routed = ctx.b.mul(&mask, &dy);
    let mut unflat = grouped;
    unflat.extend(axes.iter().map(|&a| shape[a] as i64));
    let back = ctx.b.reshape(&routed, &unflat);
    let dx = if moved {
        let mut inverse = vec![0i64; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            inverse[p] = i as i64;
        }
        ctx.b.op("Transpose", &[&back], vec![ints("perm", &inverse)])
    } else {
        back
    };
    Ok(vec![Some(dx)])
}

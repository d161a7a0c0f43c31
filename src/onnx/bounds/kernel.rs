//! Tight bounds on the squared distances of a kernel hybrid's Nyström map.
//!
//! [`crate::onnx::surgery::kernel_hybrid`] writes `d²_j = ‖f‖² − 2 f·l_j + ‖l_j‖²` as
//! `Add(Add(MatMul(Mul(f, f), ones), Mul(MatMul(f, Lᵀ), −2)), norms)`. Bounding those
//! terms one by one loses that they share `f`: the box of `‖f‖²` and that of `f·l_j`
//! are each as wide as `f`'s, and their difference wider still. Over a box
//! `f ∈ [l, u]` the exact range of `d²_j = Σᵢ (fᵢ − L_{ji})²` is
//!
//! ```text
//! [ Σᵢ (relu(lᵢ − L_{ji})² + relu(L_{ji} − uᵢ)²),   Σᵢ max((lᵢ − L_{ji})², (uᵢ − L_{ji})²) ]
//! ```
//!
//! (each coordinate's distance to the interval, and its farther end), which this rule
//! computes on an `[N, D, m]` broadcast, widened by `(γ_{D+2} + 8u)` of the upper sum
//! (the sum of `D` non-negative terms, each a rounded difference squared).

use super::super::graph::Index;
use super::super::proto::{GraphProto, NodeProto};
use super::super::{tensor, OnnxError};
use super::{Box2, Ctx};

/// When `node` is the outer Add of a Nyström map's squared distances (see the module
/// docs), its tight box; `None` when it is not.
pub(super) fn squared_distances(
    ctx: &mut Ctx,
    graph: &GraphProto,
    index: &Index,
    node: &NodeProto,
) -> Result<Option<Box2>, OnnxError> {
    let Some(f) = matched_features(ctx, graph, index, node) else {
        return Ok(None);
    };
    let Some(fb) = ctx.boxes.get(&f.features).cloned() else {
        return Ok(None);
    };
    let l3 = ctx.b.reshape(&fb.l, &[0, -1, 1]);
    let u3 = ctx.b.reshape(&fb.u, &[0, -1, 1]);
    // a = l − L, b = u − L, [N, D, m]
    let a = ctx.b.op("Sub", &[&l3, &f.landmarks_t], vec![]);
    let b = ctx.b.op("Sub", &[&u3, &f.landmarks_t], vec![]);
    let below = ctx.b.op("Relu", &[&a], vec![]);
    let neg_b = ctx.b.op("Neg", &[&b], vec![]);
    let above = ctx.b.op("Relu", &[&neg_b], vec![]);
    let below2 = ctx.b.mul(&below, &below);
    let above2 = ctx.b.mul(&above, &above);
    let near = ctx.b.op("Add", &[&below2, &above2], vec![]);
    let a2 = ctx.b.mul(&a, &a);
    let b2 = ctx.b.mul(&b, &b);
    let far = ctx.b.op("Max", &[&a2, &b2], vec![]);
    let l = ctx.b.reduce_sum(&near, &[1], false);
    let u = ctx.b.reduce_sum(&far, &[1], false);
    let rho = ctx.margin.gamma(f.width + 2) + 8.0 * ctx.margin.roundoff;
    let magnitude = u.clone();
    Ok(Some(ctx.widen(Box2 { l, u }, Some(magnitude), rho)))
}

struct Matched {
    features: String,
    landmarks_t: String,
    width: usize,
}

/// The features `f` and the constant `Lᵀ` of a matched `d²`, checking every constant.
fn matched_features(ctx: &Ctx, graph: &GraphProto, index: &Index, node: &NodeProto) -> Option<Matched> {
    let producer = |t: &str| index.producer(t).map(|i| &graph.node[i]);
    let constant = |t: &str| ctx.constants.get(t).and_then(|c| tensor::to_f32(c).ok());
    let is = |n: &NodeProto, op: &str| n.op_type() == op && n.input.len() == 2;
    if !is(node, "Add") {
        return None;
    }
    let norms = constant(&node.input[1])?;
    let partial = producer(&node.input[0]).filter(|n| is(n, "Add"))?;
    let sq = producer(&partial.input[0]).filter(|n| is(n, "MatMul"))?;
    let cross2 = producer(&partial.input[1]).filter(|n| is(n, "Mul"))?;
    let f2 = producer(&sq.input[0]).filter(|n| is(n, "Mul"))?;
    let ones = constant(&sq.input[1])?;
    let cross = producer(&cross2.input[0]).filter(|n| is(n, "MatMul"))?;
    let minus_two = constant(&cross2.input[1])?;
    let f = &f2.input[0];
    if f2.input[1] != *f || cross.input[0] != *f {
        return None;
    }
    let lt = constant(&cross.input[1])?;
    let (d, m) = match lt.shape() {
        [d, m] => (*d, *m),
        _ => return None,
    };
    let ok = ones.iter().all(|&v| v == 1.0)
        && ones.shape().first() == Some(&d)
        && minus_two.iter().all(|&v| v == -2.0)
        && norms.len() == m;
    ok.then(|| Matched {
        features: f.clone(),
        landmarks_t: cross.input[1].clone(),
        width: d,
    })
}

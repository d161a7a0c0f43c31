//! Vector–Jacobian product of LayerNormalization (opset 17) with respect to its data.
//!
//! Over the normalised axes `A = axis … rank−1`, with `n` elements each,
//! `μ = mean_A x`, `r = 1/√(mean_A (x − μ)² + ε)`, `x̂ = (x − μ)·r` and
//! `y = x̂ ⊙ scale + bias`. With `g = ∂L/∂y ⊙ scale`,
//!
//! `∂L/∂x = r · (g − mean_A g − x̂ ⊙ mean_A (g ⊙ x̂))`,
//!
//! the usual result (Ba, Kiros & Hinton, *Layer Normalization*, 2016, differentiated
//! as in PyTorch's `layer_norm_backward`). μ and r are recomputed from `x` rather
//! than read from the node's optional Mean and InvStdDev outputs, which exporters
//! leave out. The scale and bias are parameters: a path from the pixels to either is
//! refused, and so is a normalisation over the batch axis, which mixes samples.
//! The decomposed form older exporters write (ReduceMean, Sub, Pow, Sqrt, Div, Mul,
//! Add) needs no rule of its own.

use super::super::proto::NodeProto;
use super::super::OnnxError;
use super::builder::{attr_float, attr_int, axis, input};
use super::rules::Grads;
use super::{unsupported, Ctx};

pub(super) fn layer_norm(ctx: &mut Ctx, node: &NodeProto, dy: &str) -> Result<Grads, OnnxError> {
    let (x, scale) = (input(node, 0), input(node, 1));
    for (k, what) in [(1, "scale"), (2, "bias")] {
        if ctx.is_active(input(node, k)) {
            return Err(unsupported(
                node,
                format!("its {what} depends on the input; only the gradient with respect to the data is supported"),
            ));
        }
    }
    if scale.is_empty() {
        return Err(unsupported(node, "it has no scale input"));
    }
    let rank = ctx.shape(node, x)?.len();
    let first = axis(node, attr_int(node, "axis", -1)?, rank)?;
    if first == 0 {
        return Err(unsupported(
            node,
            "normalising over the batch axis cannot be differentiated per sample",
        ));
    }
    let eps = attr_float(node, "epsilon", 1e-5)?;
    let axes: Vec<i64> = (first as i64..rank as i64).collect();

    let mu = ctx.b.reduce_mean(x, &axes, true);
    let centred = ctx.b.op("Sub", &[x, &mu], vec![]);
    let sq = ctx.b.mul(&centred, &centred);
    let var = ctx.b.reduce_mean(&sq, &axes, true);
    let e = ctx.b.scalar(eps);
    let shifted = ctx.b.op("Add", &[&var, &e], vec![]);
    let sd = ctx.b.op("Sqrt", &[&shifted], vec![]);
    let r = ctx.b.op("Reciprocal", &[&sd], vec![]);
    let xhat = ctx.b.mul(&centred, &r);

    let g = ctx.b.mul(dy, scale);
    let mean_g = ctx.b.reduce_mean(&g, &axes, true);
    let gx = ctx.b.mul(&g, &xhat);
    let mean_gx = ctx.b.reduce_mean(&gx, &axes, true);
    let along = ctx.b.mul(&xhat, &mean_gx);
    let less = ctx.b.op("Sub", &[&g, &mean_g], vec![]);
    let rest = ctx.b.op("Sub", &[&less, &along], vec![]);
    let mut out = vec![Some(ctx.b.mul(&rest, &r))];
    out.resize(node.input.len(), None);
    Ok(out)
}

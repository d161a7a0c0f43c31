//! Vector–Jacobian products of the activations of MobileNet-v3, EfficientNet, ConvNeXt
//! and their kin, and of the element-wise maths their exporters decompose them into.
//!
//! With `y = f(x)` element by element, `∂L/∂x = ∂L/∂y · f′(x)`:
//! - **HardSigmoid** `y = max(0, min(1, αx + β))`: `f′ = α` where `0 < y < 1`, else 0.
//! - **HardSwish** `y = x · HardSigmoid(x)` with `α = 1/6`, `β = 1/2`: `f′ = 0` below
//!   −3, `x/3 + 1/2` from −3 to 3, and 1 above. (Before opset 14 PyTorch writes it as
//!   that product, which the Mul and HardSigmoid rules handle.)
//! - **Elu** (`α(eˣ − 1)` for `x ≤ 0`): `f′ = 1` for `x > 0`, else `y + α`.
//!   **Selu** (`γ·Elu_α`): `f′ = γ` for `x > 0`, else `y + γα`.
//! - **PRelu** (`s·x` for `x ≤ 0`, the slope `s` broadcast to `x`): `f′ = 1` or `s`.
//! - **Softplus** `y = ln(1 + eˣ)`: `f′ = σ(x)`.
//! - **Erf**: `f′ = 2/√π · e^(−x²)` (GELU exports as `x · ½ · (1 + erf(x/√2))`).
//! - **Sqrt**: `f′ = 1 / (2y)`. **Pow** `y = xᵖ` with a constant exponent:
//!   `f′ = p · x^(p−1)`, summed back over any axes the exponent broadcast `x` along.
//!
//! At the kinks the conventions are PyTorch's: the slope of `x > 0` belongs to
//! positive `x` only, and HardSigmoid's and HardSwish's middle pieces include neither
//! end for HardSigmoid and both ends for HardSwish.

use super::super::proto::NodeProto;
use super::super::tensor;
use super::super::OnnxError;
use super::builder::{attr_float, input, output};
use super::rules::{unbroadcast, Grads};
use super::{unsupported, Ctx};

/// `∂L/∂x` of an activation, given `dy`.
pub(super) fn backward(ctx: &mut Ctx, node: &NodeProto, dy: &str) -> Result<Grads, OnnxError> {
    let (x, y) = (input(node, 0), output(node));
    let slope = match node.op_type() {
        "HardSigmoid" => {
            let alpha = attr_float(node, "alpha", 0.2)?;
            let zero = ctx.b.scalar(0.0);
            let onec = ctx.b.scalar(1.0);
            let above = ctx.b.op("Greater", &[y, &zero], vec![]);
            let below = ctx.b.op("Less", &[y, &onec], vec![]);
            let inside = ctx.b.op("And", &[&above, &below], vec![]);
            let m = ctx.b.cast_float(&inside);
            let a = ctx.b.scalar(alpha);
            ctx.b.mul(&m, &a)
        }
        "HardSwish" => {
            let (lo, hi) = (ctx.b.scalar(-3.0), ctx.b.scalar(3.0));
            let under = ctx.b.op("Less", &[x, &lo], vec![]);
            let over = ctx.b.op("Greater", &[x, &hi], vec![]);
            let outside = ctx.b.op("Or", &[&under, &over], vec![]);
            let middle = ctx.b.op("Not", &[&outside], vec![]);
            let third = ctx.b.scalar(1.0 / 3.0);
            let half = ctx.b.scalar(0.5);
            let scaled = ctx.b.mul(x, &third);
            let rise = ctx.b.op("Add", &[&scaled, &half], vec![]);
            let m = ctx.b.cast_float(&middle);
            let inner = ctx.b.mul(&m, &rise);
            let top = ctx.b.cast_float(&over);
            ctx.b.op("Add", &[&inner, &top], vec![])
        }
        "Elu" => {
            let alpha = attr_float(node, "alpha", 1.0)?;
            let onec = ctx.b.scalar(1.0);
            let a = ctx.b.scalar(alpha);
            let left = ctx.b.op("Add", &[y, &a], vec![]);
            two_sided(ctx, x, &onec, &left)
        }
        "Selu" => {
            let alpha = attr_float(node, "alpha", 1.673_263_2)?;
            let gamma = attr_float(node, "gamma", 1.050_701)?;
            let g = ctx.b.scalar(gamma);
            let ga = ctx.b.scalar(gamma * alpha);
            let left = ctx.b.op("Add", &[y, &ga], vec![]);
            two_sided(ctx, x, &g, &left)
        }
        "PRelu" => {
            let s = input(node, 1);
            if ctx.is_active(s) {
                return Err(unsupported(
                    node,
                    "its slope depends on the input; only a slope that does not can be differentiated",
                ));
            }
            let onec = ctx.b.scalar(1.0);
            two_sided(ctx, x, &onec, s)
        }
        "Softplus" => ctx.b.op("Sigmoid", &[x], vec![]),
        "Erf" => {
            let sq = ctx.b.mul(x, x);
            let neg = ctx.b.op("Neg", &[&sq], vec![]);
            let e = ctx.b.op("Exp", &[&neg], vec![]);
            let c = ctx.b.scalar(std::f32::consts::FRAC_2_SQRT_PI);
            ctx.b.mul(&e, &c)
        }
        "Sqrt" => {
            let q = ctx.b.op("Div", &[dy, y], vec![]);
            let half = ctx.b.scalar(0.5);
            return Ok(vec![Some(ctx.b.mul(&q, &half))]);
        }
        "Pow" => return pow(ctx, node, dy),
        other => return Err(unsupported(node, format!("'{other}' is not an activation"))),
    };
    let mut out = vec![Some(ctx.b.mul(dy, &slope))];
    out.resize(node.input.len(), None);
    Ok(out)
}

/// `above` where `x > 0`, `below` elsewhere (both broadcast against `x`), by masks
/// rather than Where, which opsets before 9 lack.
fn two_sided(ctx: &mut Ctx, x: &str, above: &str, below: &str) -> String {
    let zero = ctx.b.scalar(0.0);
    let pos = ctx.b.op("Greater", &[x, &zero], vec![]);
    let m = ctx.b.cast_float(&pos);
    let onec = ctx.b.scalar(1.0);
    let rest = ctx.b.op("Sub", &[&onec, &m], vec![]);
    let hi = ctx.b.mul(&m, above);
    let lo = ctx.b.mul(&rest, below);
    ctx.b.op("Add", &[&hi, &lo], vec![])
}

fn pow(ctx: &mut Ctx, node: &NodeProto, dy: &str) -> Result<Grads, OnnxError> {
    let (x, p, y) = (input(node, 0), input(node, 1), output(node));
    if ctx.is_active(p) {
        return Err(unsupported(
            node,
            "its exponent depends on the input; only a constant exponent can be differentiated",
        ));
    }
    let t = ctx
        .constant(p)
        .ok_or_else(|| unsupported(node, "its exponent must be a constant to differentiate it"))?;
    let dims = tensor::shape(t)?;
    let values: Vec<f32> = match t.data_type() {
        tensor::FLOAT | tensor::DOUBLE => tensor::to_f32(t)?.iter().copied().collect(),
        _ => tensor::to_i64(t)?.iter().map(|&v| v as f32).collect(),
    };
    let g = if values.iter().all(|&v| v == 1.0) {
        dy.to_string()
    } else {
        let d = if values.iter().all(|&v| v == 2.0) {
            let two = ctx.b.scalar(2.0);
            ctx.b.mul(x, &two)
        } else {
            let less: Vec<f32> = values.iter().map(|v| v - 1.0).collect();
            let e = ctx.b.f32s("pow_exponent", &dims, &less);
            let c = ctx.b.f32s("pow_factor", &dims, &values);
            let power = ctx.b.op("Pow", &[x, &e], vec![]);
            ctx.b.mul(&power, &c)
        };
        ctx.b.mul(dy, &d)
    };
    let out = ctx.shape(node, y)?;
    Ok(vec![Some(unbroadcast(ctx, node, g, x, &out)?), None])
}

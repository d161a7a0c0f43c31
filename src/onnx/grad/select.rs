//! Vector–Jacobian products of the ops that pick elements: Split, Slice and Gather.
//!
//! Every output element is one input element, so the gradient puts `∂L/∂y` back where
//! its element came from and zeros everywhere else:
//! - **Split.** The outputs' gradients concatenated along the split axis, zeros for an
//!   output that receives none.
//! - **Slice** (constant starts, ends, axes and steps). Along each sliced axis, a run
//!   of consecutive positions is put back by a Pad; any other selection (a step other
//!   than 1, negative ones included) by appending one slab of zeros and a Gather with
//!   constant indices that sends every input position its element, or the zeros.
//! - **Gather** (constant indices). The same, when the indices are distinct. Repeated
//!   indices add up: a MatMul with the one-hot matrix `[q, d]` of the `q` indices, the
//!   gathered axis moved last.
//!
//! None of them may pick along the batch axis, since a sample's gradient must come
//! from that sample alone; a Slice that keeps the whole batch is allowed.

use super::super::proto::NodeProto;
use super::super::tensor;
use super::super::OnnxError;
use super::builder::{attr_int, attr_ints, axis, input, int, ints, same_rank};
use super::rules::Grads;
use super::{unsupported, Ctx, FWD};

pub(super) fn split(ctx: &mut Ctx, node: &NodeProto, dys: &[Option<String>]) -> Result<Grads, OnnxError> {
    let shape = ctx.shape(node, input(node, 0))?;
    let a = axis(node, attr_int(node, "axis", 0)?, shape.len())?;
    if a == 0 {
        return Err(unsupported(
            node,
            "splitting the batch axis cannot be differentiated per sample",
        ));
    }
    let mut parts = Vec::with_capacity(node.output.len());
    let mut total = 0;
    for (k, o) in node.output.iter().enumerate() {
        total += ctx.shape(node, o)?.get(a).copied().unwrap_or_default();
        parts.push(match dys.get(k).cloned().flatten() {
            Some(dy) => dy,
            None => ctx.b.zeros_like(o),
        });
    }
    if total != shape[a] {
        return Err(unsupported(
            node,
            format!(
                "its outputs add up to {total} elements along axis {a}, its input has {}",
                shape[a]
            ),
        ));
    }
    let g = match parts.as_slice() {
        [one] => one.clone(),
        _ => {
            let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
            ctx.b.op("Concat", &refs, vec![int("axis", a as i64)])
        }
    };
    let mut out = vec![Some(g)];
    out.resize(node.input.len(), None);
    Ok(out)
}

/// The positions `start, start + step, …` short of `end` that Slice picks along an
/// axis of `len` elements, after clamping as the ONNX spec says.
fn positions(start: i64, end: i64, step: i64, len: i64) -> Vec<usize> {
    if len == 0 {
        return Vec::new();
    }
    let wrap = |v: i64| if v < 0 { v.saturating_add(len) } else { v };
    let (start, end) = if step > 0 {
        (wrap(start).clamp(0, len), wrap(end).clamp(0, len))
    } else {
        (wrap(start).clamp(0, len - 1), wrap(end).clamp(-1, len - 1))
    };
    let mut out = Vec::new();
    let mut i = start;
    while (step > 0 && i < end) || (step < 0 && i > end) {
        out.push(i as usize);
        match i.checked_add(step) {
            Some(next) => i = next,
            None => break,
        }
    }
    out
}

pub(super) fn slice(ctx: &mut Ctx, node: &NodeProto, dy: &str) -> Result<Grads, OnnxError> {
    let (xs, ys) = same_rank(ctx, node)?;
    let rank = xs.len();
    let optional = |ctx: &Ctx, k: usize, what: &str| -> Result<Option<Vec<i64>>, OnnxError> {
        match node.input.get(k).filter(|s| !s.is_empty()) {
            Some(name) => ctx.const_i64(node, name, what).map(Some),
            None => Ok(None),
        }
    };
    let (starts, ends, axes, steps) = if ctx.opset() < 10 {
        let need = |name: &str| -> Result<Vec<i64>, OnnxError> {
            attr_ints(node, name)?.ok_or_else(|| unsupported(node, format!("no '{name}' given")))
        };
        (need("starts")?, need("ends")?, attr_ints(node, "axes")?, None)
    } else {
        (
            ctx.const_i64(node, input(node, 1), "starts")?,
            ctx.const_i64(node, input(node, 2), "ends")?,
            optional(&*ctx, 3, "axes")?,
            optional(&*ctx, 4, "steps")?,
        )
    };
    let n = starts.len();
    let axes = axes.unwrap_or_else(|| (0..n as i64).collect());
    let steps = steps.unwrap_or_else(|| vec![1; n]);
    if ends.len() != n || axes.len() != n || steps.len() != n {
        return Err(unsupported(
            node,
            format!(
                "{n} starts, {} ends, {} axes and {} steps do not match",
                ends.len(),
                axes.len(),
                steps.len()
            ),
        ));
    }
    let mut seen = vec![false; rank];
    let mut g = dy.to_string();
    for k in 0..n {
        let a = axis(node, axes[k], rank)?;
        if std::mem::replace(&mut seen[a], true) {
            return Err(unsupported(node, format!("axis {a} is sliced twice")));
        }
        if steps[k] == 0 {
            return Err(unsupported(node, "a step of 0"));
        }
        let picked = positions(starts[k], ends[k], steps[k], xs[a] as i64);
        if picked.len() != ys[a] {
            return Err(unsupported(
                node,
                format!(
                    "it picks {} elements along axis {a}, its output has {}",
                    picked.len(),
                    ys[a]
                ),
            ));
        }
        if a == 0 {
            // Starts 0, ends past any batch, step 1: the whole batch, whatever its size.
            if starts[k] == 0 && ends[k] >= i64::from(i32::MAX) && steps[k] == 1 {
                continue;
            }
            return Err(unsupported(
                node,
                "slicing the batch axis cannot be differentiated per sample",
            ));
        }
        if picked.is_empty() {
            return Err(unsupported(node, format!("it picks nothing along axis {a}")));
        }
        g = place(ctx, g, a, rank, &picked, xs[a]);
    }
    let mut out = vec![Some(g)];
    out.resize(node.input.len(), None);
    Ok(out)
}

pub(super) fn gather(ctx: &mut Ctx, node: &NodeProto, dy: &str) -> Result<Grads, OnnxError> {
    let xs = ctx.shape(node, input(node, 0))?;
    let rank = xs.len();
    let a = axis(node, attr_int(node, "axis", 0)?, rank)?;
    if a == 0 {
        return Err(unsupported(
            node,
            "gathering along the batch axis cannot be differentiated per sample",
        ));
    }
    let indices = input(node, 1);
    let t = ctx.constant(indices).ok_or_else(|| {
        unsupported(
            node,
            format!(
                "its indices ('{}') must be a constant to differentiate it",
                indices.trim_start_matches(FWD)
            ),
        )
    })?;
    let index_rank = t.dims.len();
    let len = xs[a];
    let picked = tensor::to_i64(t)?
        .iter()
        .map(|&i| {
            let j = if i < 0 { i + len as i64 } else { i };
            usize::try_from(j)
                .ok()
                .filter(|&j| j < len)
                .ok_or_else(|| unsupported(node, format!("index {i} is out of range for {len} elements")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if picked.is_empty() {
        return Err(unsupported(node, "it gathers nothing"));
    }
    // The index axes of dy merged into one, of the indices' count.
    let g = if index_rank == 1 {
        dy.to_string()
    } else {
        let mut target = vec![-1i64];
        target.extend(xs[1..a].iter().map(|&d| d as i64));
        target.push(picked.len() as i64);
        target.extend(xs[a + 1..].iter().map(|&d| d as i64));
        ctx.b.reshape(dy, &target)
    };
    Ok(vec![Some(place(ctx, g, a, rank, &picked, len)), None])
}

/// Scatters `g`, whose axis `a` holds the elements taken from positions `picked` of
/// an axis of `len` elements, back onto that axis (zeros elsewhere; repeated
/// positions add up).
fn place(ctx: &mut Ctx, g: String, a: usize, rank: usize, picked: &[usize], len: usize) -> String {
    let m = picked.len();
    let first = picked[0];
    if picked.iter().enumerate().all(|(j, &p)| p == first + j) {
        if m == len {
            return g;
        }
        let mut pads = vec![0i64; 2 * rank];
        pads[a] = first as i64;
        pads[rank + a] = (len - first - m) as i64;
        return ctx.b.pad(&g, &pads, 0.0);
    }
    let mut source: Vec<Option<usize>> = vec![None; len];
    let distinct = picked.iter().enumerate().all(|(j, &p)| source[p].replace(j).is_none());
    if distinct {
        // Position m of the padded axis is the slab of zeros.
        let mut pads = vec![0i64; 2 * rank];
        pads[rank + a] = 1;
        let padded = ctx.b.pad(&g, &pads, 0.0);
        let from: Vec<i64> = source.iter().map(|s| s.unwrap_or(m) as i64).collect();
        let index = ctx.b.i64s("scatter_index", &[len], &from);
        return ctx.b.op("Gather", &[&padded, &index], vec![int("axis", a as i64)]);
    }
    let mut one_hot = vec![0.0f32; m * len];
    for (j, &p) in picked.iter().enumerate() {
        one_hot[j * len + p] = 1.0;
    }
    let o = ctx.b.f32s("one_hot", &[m, len], &one_hot);
    if a == rank - 1 {
        return ctx.b.op("MatMul", &[&g, &o], vec![]);
    }
    let mut perm: Vec<i64> = (0..rank as i64).filter(|&i| i != a as i64).collect();
    perm.push(a as i64);
    let mut inverse = vec![0i64; rank];
    for (i, &p) in perm.iter().enumerate() {
        inverse[p as usize] = i as i64;
    }
    let moved = ctx.b.op("Transpose", &[&g], vec![ints("perm", &perm)]);
    let product = ctx.b.op("MatMul", &[&moved, &o], vec![]);
    ctx.b.op("Transpose", &[&product], vec![ints("perm", &inverse)])
}

#[cfg(test)]
mod tests {
    use super::positions;

    #[test]
    fn slice_positions_follow_the_onnx_clamping() {
        assert_eq!(positions(1, 4, 1, 6), [1, 2, 3]);
        assert_eq!(positions(0, i64::MAX, 2, 5), [0, 2, 4]);
        assert_eq!(positions(-1, i64::MIN, -1, 4), [3, 2, 1, 0]);
        assert_eq!(positions(5, 0, -2, 4), [3, 1]);
        assert_eq!(positions(-3, -1, 1, 5), [2, 3]);
        assert!(positions(4, 2, 1, 5).is_empty());
        assert!(positions(0, 1, -1, 0).is_empty());
        assert_eq!(positions(0, i64::MAX, i64::MAX, 3), [0]);
    }
}

//! Vector–Jacobian products of convolution and pooling.
//!
//! - **Conv.** ConvTranspose of `dy` with the forward kernel, then the padding cropped
//!   off. (The other formulation, a convolution with the kernel flipped in space and
//!   its channel axes swapped, ran 2–8× slower in both tract and ONNX Runtime on the
//!   MNIST network's layers: its padding of k − 1 wastes most of the work.)
//! - **MaxPool.** Each window position j is a strided slice of the input (one
//!   `[N, C, O…]` tensor per j); comparing it with the pooled output, position by
//!   position, keeps the first maximum of every window, as PyTorch does. The masked
//!   `dy` of each position is interleaved back: two Concats when the windows tile the
//!   input, otherwise zeros interleaved by Pad and the positions summed. Only
//!   element-wise ops, slices and pads: tract ran ArgMax and broadcasting compares
//!   over a window axis ten times slower than the pooling itself.
//! - **AveragePool.** `dy` divided by each window's element count, scattered back by a
//!   ConvTranspose with a kernel of ones.
//!
//! The padding of the forward op is cropped off the scattered gradient with Slice;
//! positions no window reached get zeros with Pad.

use super::super::proto::NodeProto;
use super::super::OnnxError;
use super::builder::{attr_int, attr_ints, attr_string, batched, input, int, ints, output};
use super::{unsupported, Ctx};

/// Where a window sits: kernel, strides, dilations and padding per spatial axis,
/// with the spatial sizes of the input and output.
struct Geometry {
    kernel: Vec<usize>,
    strides: Vec<usize>,
    dilations: Vec<usize>,
    begin: Vec<usize>,
    end: Vec<usize>,
    input: Vec<usize>,
    output: Vec<usize>,
}

impl Geometry {
    /// Extent, in padded-input coordinates, that the windows cover.
    fn covered(&self, i: usize) -> usize {
        (self.output[i] - 1) * self.strides[i] + (self.kernel[i] - 1) * self.dilations[i] + 1
    }

    fn rank(&self) -> usize {
        self.kernel.len()
    }

    fn window_size(&self) -> usize {
        self.kernel.iter().product()
    }
}

fn as_usize(node: &NodeProto, name: &str, v: &[i64]) -> Result<Vec<usize>, OnnxError> {
    v.iter()
        .map(|&x| usize::try_from(x).map_err(|_| unsupported(node, format!("attribute '{name}' holds {x}"))))
        .collect()
}

fn geometry(ctx: &Ctx, node: &NodeProto, kernel: Vec<usize>) -> Result<Geometry, OnnxError> {
    let x = ctx.shape(node, input(node, 0))?;
    let y = ctx.shape(node, output(node))?;
    let nd = kernel.len();
    if x.len() != nd + 2 || y.len() != nd + 2 || nd == 0 || kernel.contains(&0) {
        return Err(unsupported(
            node,
            format!("input {x:?}, output {y:?} and kernel {kernel:?} do not fit together"),
        ));
    }
    if y[2..].contains(&0) {
        return Err(unsupported(node, "the output is empty"));
    }
    let ones = vec![1i64; nd];
    let strides = as_usize(
        node,
        "strides",
        &attr_ints(node, "strides")?.unwrap_or_else(|| ones.clone()),
    )?;
    let dilations = as_usize(node, "dilations", &attr_ints(node, "dilations")?.unwrap_or(ones))?;
    if strides.len() != nd || dilations.len() != nd || strides.contains(&0) || dilations.contains(&0) {
        return Err(unsupported(node, "strides or dilations do not match the kernel"));
    }
    let input = x[2..].to_vec();
    let output = y[2..].to_vec();
    let auto_pad = attr_string(node, "auto_pad", "NOTSET")?;
    let (begin, end) = match auto_pad.as_str() {
        "NOTSET" => {
            let pads = as_usize(
                node,
                "pads",
                &attr_ints(node, "pads")?.unwrap_or_else(|| vec![0; 2 * nd]),
            )?;
            if pads.len() != 2 * nd {
                return Err(unsupported(node, format!("{} pads for {nd} spatial axes", pads.len())));
            }
            (pads[..nd].to_vec(), pads[nd..].to_vec())
        }
        "VALID" => (vec![0; nd], vec![0; nd]),
        "SAME_UPPER" | "SAME_LOWER" => {
            let mut b = Vec::with_capacity(nd);
            let mut e = Vec::with_capacity(nd);
            for i in 0..nd {
                let need = (output[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1;
                let total = need.saturating_sub(input[i]);
                let small = total / 2;
                if auto_pad == "SAME_UPPER" {
                    b.push(small);
                    e.push(total - small);
                } else {
                    b.push(total - small);
                    e.push(small);
                }
            }
            (b, e)
        }
        other => return Err(unsupported(node, format!("unknown auto_pad '{other}'"))),
    };
    Ok(Geometry {
        kernel,
        strides,
        dilations,
        begin,
        end,
        input,
        output,
    })
}

fn kernel_attr(node: &NodeProto) -> Result<Vec<usize>, OnnxError> {
    let k = attr_ints(node, "kernel_shape")?.ok_or_else(|| unsupported(node, "no kernel_shape"))?;
    as_usize(node, "kernel_shape", &k)
}

fn window_attrs(g: &Geometry) -> Vec<super::super::proto::AttributeProto> {
    let to = |v: &[usize]| v.iter().map(|&x| x as i64).collect::<Vec<_>>();
    vec![ints("strides", &to(&g.strides)), ints("dilations", &to(&g.dilations))]
}

/// Crops a gradient laid out over the windows' extent (`[N, C, covered…]`, in
/// padded-input coordinates) to the input: drops the leading padding and fills
/// positions past the last window with zeros.
fn place(ctx: &mut Ctx, full: String, g: &Geometry) -> String {
    let nd = g.rank();
    let mut starts = Vec::new();
    let mut ends = Vec::new();
    let mut axes = Vec::new();
    let mut fill = vec![0i64; 2 * (nd + 2)];
    for i in 0..nd {
        let covered = g.covered(i);
        let start = g.begin[i].min(covered);
        let stop = (g.begin[i] + g.input[i]).min(covered);
        if start != 0 || stop != covered {
            starts.push(start as i64);
            ends.push(stop as i64);
            axes.push((i + 2) as i64);
        }
        fill[nd + 2 + i + 2] = (g.input[i] - (stop - start)) as i64;
    }
    let mut out = full;
    if !axes.is_empty() {
        out = ctx.b.slice(&out, &starts, &ends, &axes);
    }
    if fill.iter().any(|&p| p > 0) {
        out = ctx.b.pad(&out, &fill, 0.0);
    }
    out
}

pub(super) fn conv(ctx: &mut Ctx, node: &NodeProto, dy: &str) -> Result<Vec<Option<String>>, OnnxError> {
    let w = ctx.const_f32(node, input(node, 1), "weight")?;
    let wd = w.shape().to_vec();
    if wd.len() < 3 {
        return Err(unsupported(node, format!("weight of shape {wd:?}")));
    }
    let g = geometry(ctx, node, wd[2..].to_vec())?;
    let group = usize::try_from(attr_int(node, "group", 1)?).unwrap_or(0);
    if group == 0 || wd[0] % group != 0 {
        return Err(unsupported(
            node,
            format!("group {group} does not divide {} output channels", wd[0]),
        ));
    }
    let mut attrs = window_attrs(&g);
    attrs.push(int("group", group as i64));
    let full = ctx.b.op("ConvTranspose", &[dy, input(node, 1)], attrs);
    let dx = place(ctx, full, &g);
    let mut out = vec![Some(dx)];
    out.resize(node.input.len(), None);
    Ok(out)
}

/// One-hot depthwise kernels `[C·K, 1, k…]` that copy each window position.
fn one_hot(ctx: &mut Ctx, channels: usize, g: &Geometry) -> String {
    let k = g.window_size();
    let mut v = vec![0f32; channels * k * k];
    for c in 0..channels {
        for j in 0..k {
            v[(c * k + j) * k + j] = 1.0;
        }
    }
    let mut dims = vec![channels * k, 1];
    dims.extend(&g.kernel);
    ctx.b.f32s("window_onehot", &dims, &v)
}

/// The multi-index of `flat` in row-major order over `dims`.
fn unravel(mut flat: usize, dims: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; dims.len()];
    for i in (0..dims.len()).rev() {
        idx[i] = flat % dims[i];
        flat /= dims[i];
    }
    idx
}

pub(super) fn max_pool(ctx: &mut Ctx, node: &NodeProto, dy: &str) -> Result<Vec<Option<String>>, OnnxError> {
    let (x, y) = (input(node, 0).to_string(), output(node).to_string());
    let g = geometry(ctx, node, kernel_attr(node)?)?;
    let channels = ctx.shape(node, &x)?[1];
    let nd = g.rank();
    let k = g.window_size();
    let phases = window_phases(ctx, &x, channels, &g)?;
    // First maximum of each window, in row-major window order, as PyTorch picks it:
    // phase j wins where it equals the max and no earlier phase did.
    let mut free: Option<String> = None;
    let mut routed = Vec::with_capacity(k);
    for p in &phases {
        let hit = if ctx.opset() >= 11 {
            let eq = ctx.b.op("Equal", &[p, &y], vec![]);
            ctx.b.cast_float(&eq)
        } else {
            let below = ctx.b.op("Less", &[p, &y], vec![]);
            let eq = ctx.b.op("Not", &[&below], vec![]);
            ctx.b.cast_float(&eq)
        };
        let (won, left) = match &free {
            None => {
                let one = ctx.b.scalar(1.0);
                let left = ctx.b.op("Sub", &[&one, &hit], vec![]);
                (hit, left)
            }
            Some(f) => {
                let won = ctx.b.mul(&hit, f);
                let left = ctx.b.op("Sub", &[f, &won], vec![]);
                (won, left)
            }
        };
        free = Some(left);
        routed.push(ctx.b.mul(&won, dy));
    }
    let tiles = g.kernel == g.strides && g.dilations.iter().all(|&d| d == 1);
    let c = channels as i64;
    let full = if tiles && nd == 2 {
        // Windows tile the input: interleave the phases back with two Concats.
        let (oh, ow) = (g.output[0] as i64, g.output[1] as i64);
        let mut rows = Vec::with_capacity(g.kernel[0]);
        for a in 0..g.kernel[0] {
            let cols: Vec<String> = (0..g.kernel[1])
                .map(|b| ctx.b.reshape(&routed[a * g.kernel[1] + b], &[-1, c, oh, 1, ow, 1]))
                .collect();
            let refs: Vec<&str> = cols.iter().map(String::as_str).collect();
            rows.push(ctx.b.op("Concat", &refs, vec![int("axis", 5)]));
        }
        let refs: Vec<&str> = rows.iter().map(String::as_str).collect();
        let grid = ctx.b.op("Concat", &refs, vec![int("axis", 3)]);
        // The grid is O·s long, which is what the windows cover: (O − 1)·s + k.
        ctx.b
            .reshape(&grid, &[-1, c, oh * g.strides[0] as i64, ow * g.strides[1] as i64])
    } else {
        let mut terms = Vec::with_capacity(k);
        for (j, r) in routed.iter().enumerate() {
            let jj = unravel(j, &g.kernel);
            terms.push(spread(ctx, r, channels, &g, &jj));
        }
        ctx.b.sum(&terms)
    };
    let dx = place(ctx, full, &g);
    let mut out = vec![Some(dx)];
    out.resize(node.input.len(), None);
    Ok(out)
}

/// The value at window position j of every window, one `[N, C, O…]` tensor per j in
/// row-major order over the kernel. Strided slices of the (padded) input where the
/// opset has them; before opset 10, a depthwise convolution with one-hot kernels,
/// whose products are exact copies.
fn window_phases(ctx: &mut Ctx, x: &str, channels: usize, g: &Geometry) -> Result<Vec<String>, OnnxError> {
    let nd = g.rank();
    let k = g.window_size();
    let covered: Vec<usize> = (0..nd).map(|i| g.covered(i)).collect();
    let ends: Vec<usize> = (0..nd)
        .map(|i| covered[i].saturating_sub(g.input[i] + g.begin[i]))
        .collect();
    let axes: Vec<i64> = (2..2 + nd as i64).collect();
    if ctx.opset() >= 10 {
        // Padding never wins: the smallest float is below every real activation.
        let xp = if g.begin.iter().chain(&ends).any(|&p| p > 0) {
            let mut pads = vec![0i64, 0];
            pads.extend(g.begin.iter().map(|&p| p as i64));
            pads.extend([0, 0]);
            pads.extend(ends.iter().map(|&p| p as i64));
            ctx.b.pad(x, &pads, f32::MIN)
        } else {
            x.to_string()
        };
        let steps: Vec<i64> = g.strides.iter().map(|&s| s as i64).collect();
        Ok((0..k)
            .map(|j| {
                let jj = unravel(j, &g.kernel);
                let starts: Vec<i64> = (0..nd).map(|i| (jj[i] * g.dilations[i]) as i64).collect();
                let stops: Vec<i64> = (0..nd)
                    .map(|i| (jj[i] * g.dilations[i] + (g.output[i] - 1) * g.strides[i] + 1) as i64)
                    .collect();
                ctx.b.slice_steps(&xp, &starts, &stops, &axes, &steps)
            })
            .collect())
    } else {
        let mut pads: Vec<i64> = g.begin.iter().map(|&b| b as i64).collect();
        pads.extend(ends.iter().map(|&p| p as i64));
        let e = one_hot(ctx, channels, g);
        let mut attrs = window_attrs(g);
        attrs.push(ints("pads", &pads));
        attrs.push(int("group", channels as i64));
        let p = ctx.b.op("Conv", &[x, &e], attrs);
        let mut w5 = vec![-1, channels as i64, k as i64];
        w5.extend(g.output.iter().map(|&o| o as i64));
        let p5 = ctx.b.reshape(&p, &w5);
        let mut o4 = vec![-1, channels as i64];
        o4.extend(g.output.iter().map(|&o| o as i64));
        let padded = pads.iter().any(|&p| p > 0);
        let mut out = Vec::with_capacity(k);
        for j in 0..k {
            let one = ctx.b.slice(&p5, &[j as i64], &[j as i64 + 1], &[2]);
            let mut v = ctx.b.reshape(&one, &o4);
            if padded {
                // Zero padding could tie with a maximum of 0: push padded cells down.
                let jj = unravel(j, &g.kernel);
                let cells: usize = g.output.iter().product();
                let mut bias = vec![0f32; cells];
                for (o, slot) in bias.iter_mut().enumerate() {
                    let oo = unravel(o, &g.output);
                    let inside = (0..nd).all(|i| {
                        let p = (oo[i] * g.strides[i] + jj[i] * g.dilations[i]) as i64 - g.begin[i] as i64;
                        p >= 0 && p < g.input[i] as i64
                    });
                    if !inside {
                        *slot = -1.0e30;
                    }
                }
                let b = ctx.b.f32s("pool_padding", &g.output, &bias);
                v = ctx.b.op("Add", &[&v, &b], vec![]);
            }
            out.push(v);
        }
        Ok(out)
    }
}

/// Lays `r` (`[N, C, O…]`, the gradient at window position `j` of every window) out
/// over the windows' extent: element o lands at o·s + j·d, zeros elsewhere.
fn spread(ctx: &mut Ctx, r: &str, channels: usize, g: &Geometry, j: &[usize]) -> String {
    let nd = g.rank();
    let c = channels as i64;
    let mut v = r.to_string();
    if g.strides.iter().any(|&s| s > 1) {
        // Interleave s − 1 zeros after every element: [N, C, O1, 1, O2, 1, …] padded
        // to [N, C, O1, s1, O2, s2, …], then merged.
        let mut split = vec![-1, c];
        let mut pads_end = vec![0i64, 0];
        for i in 0..nd {
            split.extend([g.output[i] as i64, 1]);
            pads_end.extend([0, g.strides[i] as i64 - 1]);
        }
        let r6 = ctx.b.reshape(&v, &split);
        let mut pads = vec![0i64; pads_end.len()];
        pads.extend(pads_end);
        let wide = ctx.b.pad(&r6, &pads, 0.0);
        let mut merged = vec![-1, c];
        merged.extend((0..nd).map(|i| (g.output[i] * g.strides[i]) as i64));
        let m = ctx.b.reshape(&wide, &merged);
        let ends: Vec<i64> = (0..nd).map(|i| ((g.output[i] - 1) * g.strides[i] + 1) as i64).collect();
        let axes: Vec<i64> = (2..2 + nd as i64).collect();
        let starts = vec![0i64; nd];
        v = ctx.b.slice(&m, &starts, &ends, &axes);
    }
    let mut pads = vec![0i64, 0];
    pads.extend((0..nd).map(|i| (j[i] * g.dilations[i]) as i64));
    pads.extend([0, 0]);
    pads.extend((0..nd).map(|i| ((g.kernel[i] - 1 - j[i]) * g.dilations[i]) as i64));
    if pads.iter().any(|&p| p > 0) {
        v = ctx.b.pad(&v, &pads, 0.0);
    }
    v
}

pub(super) fn average_pool(ctx: &mut Ctx, node: &NodeProto, dy: &str) -> Result<Vec<Option<String>>, OnnxError> {
    let g = geometry(ctx, node, kernel_attr(node)?)?;
    let include_pad = attr_int(node, "count_include_pad", 0)? != 0;
    let channels = ctx.shape(node, input(node, 0))?[1];
    let nd = g.rank();
    let k = g.window_size();
    let cells: usize = g.output.iter().product();
    // 1 / (number of elements each window averages)
    let mut inv = vec![0f32; cells];
    for (o, slot) in inv.iter_mut().enumerate() {
        let oo = unravel(o, &g.output);
        let count = (0..k)
            .filter(|&j| {
                let jj = unravel(j, &g.kernel);
                (0..nd).all(|i| {
                    let p = (oo[i] * g.strides[i] + jj[i] * g.dilations[i]) as i64 - g.begin[i] as i64;
                    let (lo, hi) = if include_pad {
                        (-(g.begin[i] as i64), (g.input[i] + g.end[i]) as i64)
                    } else {
                        (0, g.input[i] as i64)
                    };
                    p >= lo && p < hi
                })
            })
            .count();
        *slot = if count == 0 { 0.0 } else { 1.0 / count as f32 };
    }
    let inv = ctx.b.f32s("pool_divisor", &g.output, &inv);
    let scaled = ctx.b.mul(dy, &inv);
    let mut dims = vec![channels, 1];
    dims.extend(&g.kernel);
    let ones = ctx.b.f32s("pool_ones", &dims, &vec![1.0; channels * k]);
    let mut attrs = window_attrs(&g);
    attrs.push(int("group", channels as i64));
    let full = ctx.b.op("ConvTranspose", &[&scaled, &ones], attrs);
    let dx = place(ctx, full, &g);
    Ok(vec![Some(dx)])
}

pub(super) fn global_average_pool(ctx: &mut Ctx, node: &NodeProto, dy: &str) -> Result<Vec<Option<String>>, OnnxError> {
    let shape = ctx.shape(node, input(node, 0))?;
    let spatial = shape.get(2..).unwrap_or_default().to_vec();
    let cells: usize = spatial.iter().product();
    if cells == 0 {
        return Err(unsupported(node, "the input has no spatial extent"));
    }
    let fill = ctx.b.f32s("gap_share", &spatial, &vec![1.0 / cells as f32; cells]);
    Ok(vec![Some(ctx.b.mul(dy, &fill))])
}

pub(super) fn global_max_pool(ctx: &mut Ctx, node: &NodeProto, dy: &str) -> Result<Vec<Option<String>>, OnnxError> {
    let x = input(node, 0).to_string();
    let shape = ctx.shape(node, &x)?;
    let target = batched(ctx, node, &x)?;
    let channels = *shape
        .get(1)
        .ok_or_else(|| unsupported(node, "the input has no channel axis"))? as i64;
    let cells: usize = shape.get(2..).unwrap_or_default().iter().product();
    let flat = ctx.b.reshape(&x, &[-1, channels, cells as i64]);
    let arg = ctx.b.op("ArgMax", &[&flat], vec![int("axis", 2), int("keepdims", 1)]);
    let range: Vec<i64> = (0..cells as i64).collect();
    let ks = ctx.b.i64s("cell_index", &[cells], &range);
    let eq = ctx.b.op("Equal", &[&arg, &ks], vec![]);
    let mask = ctx.b.cast_float(&eq);
    let dy3 = ctx.b.reshape(dy, &[-1, channels, 1]);
    let routed = ctx.b.mul(&mask, &dy3);
    Ok(vec![Some(ctx.b.reshape(&routed, &target))])
}

//! Coefficient lists and the buffers back-substitution accumulates them in.

/// Linear coefficients on a layer's values: the non-zero ones, `(index, value)` in
/// increasing index order. A back-substitution from one neuron only ever touches its
/// receptive field, so its coefficients stay sparse until the pixels.
pub(super) type Coefficients = Vec<(usize, f64)>;

/// Buffers reused by the steps of back-substitutions: a dense accumulator over the
/// widest layer, the indices it holds, and the least and greatest of them.
#[derive(Debug, Default)]
pub(super) struct Scratch {
    pub(super) acc: Vec<f64>,
    pub(super) seen: Vec<bool>,
    pub(super) touched: Vec<usize>,
    pub(super) span: Option<(usize, usize)>,
    /// The channels, rows and columns written by [`Self::add_raw`], inclusive.
    pub(super) rect: Option<[(usize, usize); 3]>,
    pub(super) window: Vec<usize>,
}

impl Scratch {
    /// Makes room for `n` values.
    pub(super) fn room(&mut self, n: usize) {
        if self.acc.len() < n {
            self.acc.resize(n, 0.0);
            self.seen.resize(n, false);
        }
    }

    /// Adds `v` at `i` without the bookkeeping of the indices held: for a step that
    /// declares the block it writes in with [`Self::cover`] and ends with
    /// [`Self::drain_block`].
    pub(super) fn add_raw(&mut self, i: usize, v: f64) {
        self.acc[i] += v;
    }

    /// Widens the block of `[C, H, W]` written to hold channels, rows and columns
    /// `lo..=hi` (per axis).
    pub(super) fn cover(&mut self, lo: [usize; 3], hi: [usize; 3]) {
        let rect = self
            .rect
            .get_or_insert([(lo[0], hi[0]), (lo[1], hi[1]), (lo[2], hi[2])]);
        for (r, (l, h)) in rect.iter_mut().zip(lo.into_iter().zip(hi)) {
            *r = (r.0.min(l), r.1.max(h));
        }
    }

    /// [`Self::drain`] after [`Self::add_raw`]: the non-zero values of the block
    /// covered in `[C, H, W]` `shape`, in increasing index order.
    pub(super) fn drain_block(&mut self, shape: [usize; 3], out: &mut Coefficients) {
        out.clear();
        let Some([(c0, c1), (y0, y1), (x0, x1)]) = self.rect.take() else {
            return;
        };
        let [_, h, w] = shape;
        for c in c0..=c1 {
            for y in y0..=y1 {
                let row = (c * h + y) * w;
                for (x, a) in self.acc[row + x0..=row + x1].iter_mut().enumerate() {
                    let v = std::mem::take(a);
                    if v != 0.0 {
                        out.push((row + x0 + x, v));
                    }
                }
            }
        }
    }

    pub(super) fn add(&mut self, i: usize, v: f64) {
        if !self.seen[i] {
            self.seen[i] = true;
            self.touched.push(i);
            self.span = Some(self.span.map_or((i, i), |(lo, hi)| (lo.min(i), hi.max(i))));
        }
        self.acc[i] += v;
    }

    /// Moves the accumulated values into `out`, in increasing index order (so that
    /// every sum downstream is taken in the order of the dense computation), and
    /// clears the accumulator. The indices are put in order by a scan of the span they
    /// lie in when that is short, else by sorting the list (most often nearly in order
    /// already: a step from one neuron touches its receptive field row by row).
    pub(super) fn drain(&mut self, out: &mut Coefficients) {
        out.clear();
        let Some((lo, hi)) = self.span.take() else {
            return;
        };
        let t = self.touched.len();
        if hi - lo < 4 * t {
            self.touched.clear();
            self.touched.extend((lo..=hi).filter(|&i| self.seen[i]));
        } else {
            sort_nearly_sorted(&mut self.touched);
        }
        for &i in &self.touched {
            let v = std::mem::take(&mut self.acc[i]);
            self.seen[i] = false;
            if v != 0.0 {
                out.push((i, v));
            }
        }
        self.touched.clear();
    }
}

/// Sorts `v` by insertion while that takes few moves (a list nearly in order), else by
/// `sort_unstable`.
pub(super) fn sort_nearly_sorted(v: &mut [usize]) {
    let budget = 8 * v.len();
    let mut moves = 0;
    for i in 1..v.len() {
        let x = v[i];
        let mut j = i;
        while j > 0 && v[j - 1] > x {
            v[j] = v[j - 1];
            j -= 1;
            moves += 1;
        }
        v[j] = x;
        if moves > budget {
            v.sort_unstable();
            return;
        }
    }
}

//! The chart's x axis: a tick at each value the caller asked for, labelled with that
//! exact value (Rust's shortest round-trip decimal, so `0.005` reads `0.005`).
//!
//! Ticks that are roughly evenly spaced (smallest gap ≥ half the mean gap) sit on a
//! linear axis. Otherwise the ticks are placed at 0, 1, 2, … and an x between two ticks
//! tᵢ < x < tᵢ₊₁ is placed at i + (x − tᵢ)/(tᵢ₊₁ − tᵢ), beyond the ends by the nearest
//! gap's slope: a monotone, piecewise-linear axis that keeps every tick readable.
//! When labels would still overlap (many ticks), every tick keeps its grid line but
//! only every k-th is labelled, k as small as keeps the labels apart.

use std::ops::Range;

use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, Ranged, ValueFormatter};

/// Smallest gap between labels, in pixels.
const LABEL_GAP: f64 = 10.0;

/// One tick: its value, its position on the axis, its label and whether the label is
/// drawn.
#[derive(Debug, Clone)]
struct Tick {
    value: f64,
    pos: f64,
    label: String,
    shown: bool,
}

/// The x axis, usable as a plotters coordinate.
#[derive(Debug, Clone)]
pub(super) struct XAxis {
    ticks: Vec<Tick>,
    categorical: bool,
    /// The drawn range, in positions.
    range: (f64, f64),
}

impl XAxis {
    /// The axis for ticks at `requested` (non-finite ones dropped, duplicates merged)
    /// or, when none is left, at the distinct finite values of `data`; its range covers
    /// the ticks and the finite `data`. `None` when there is nothing to place at all.
    pub(super) fn new(requested: &[f64], data: &[f64]) -> Option<Self> {
        let mut values: Vec<f64> = requested.iter().copied().filter(|v| v.is_finite()).collect();
        if values.is_empty() {
            values = data.iter().copied().filter(|v| v.is_finite()).collect();
        }
        // -0.0 + 0.0 is 0.0: no "-0" label.
        let mut values: Vec<f64> = values.into_iter().map(|v| v + 0.0).collect();
        values.sort_by(f64::total_cmp);
        values.dedup();
        let (&first, &last) = (values.first()?, values.last()?);

        let n = values.len();
        let smallest_gap = values.windows(2).map(|w| w[1] - w[0]).fold(f64::INFINITY, f64::min);
        let mean_gap = (last - first) / (n.max(2) - 1) as f64;
        let categorical = n >= 3 && smallest_gap < 0.5 * mean_gap;

        let mut axis = Self {
            ticks: values
                .iter()
                .enumerate()
                .map(|(i, &value)| Tick {
                    value,
                    pos: if categorical { i as f64 } else { value },
                    label: format!("{value}"),
                    shown: true,
                })
                .collect(),
            categorical,
            range: (0.0, 0.0),
        };
        let positions = axis
            .ticks
            .iter()
            .map(|t| t.pos)
            .chain(data.iter().filter(|v| v.is_finite()).map(|&x| axis.position(x)));
        let (lo, hi) = positions.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| (lo.min(p), hi.max(p)));
        let pad = if categorical {
            0.4
        } else if hi > lo {
            0.05 * (hi - lo)
        } else {
            // A single x: a window around it, half its size wide (or 1 around 0).
            if lo == 0.0 {
                0.5
            } else {
                0.5 * lo.abs()
            }
        };
        axis.range = (lo - pad, hi + pad);
        Some(axis)
    }

    /// Where `x` sits on the axis.
    pub(super) fn position(&self, x: f64) -> f64 {
        if !self.categorical || self.ticks.len() < 2 {
            return x;
        }
        let last = self.ticks.len() - 2;
        // The gap [tᵢ, tᵢ₊₁] holding x; the first or last gap beyond the ends.
        let i = self.ticks.partition_point(|t| t.value <= x).saturating_sub(1).min(last);
        let (a, b) = (&self.ticks[i], &self.ticks[i + 1]);
        a.pos + (x - a.value) / (b.value - a.value)
    }

    /// Whether the ticks are evenly placed rather than to scale.
    pub(super) fn categorical(&self) -> bool {
        self.categorical
    }

    /// The number of ticks.
    pub(super) fn len(&self) -> usize {
        self.ticks.len()
    }

    /// The labels that are drawn, left to right.
    #[cfg(test)]
    pub(super) fn shown_labels(&self) -> Vec<&str> {
        self.ticks
            .iter()
            .filter(|t| t.shown)
            .map(|t| t.label.as_str())
            .collect()
    }

    /// Labels every k-th tick, from the first, for the smallest k at which no label
    /// overlaps its labelled neighbour, given each label's width in pixels and the
    /// axis' length in pixels. Every tick keeps its grid line.
    pub(super) fn thin_labels(&mut self, width: impl Fn(&str) -> f64, axis_px: f64) {
        let (lo, hi) = self.range;
        let spans: Vec<(f64, f64)> = self
            .ticks
            .iter()
            .map(|t| {
                let centre = (t.pos - lo) / (hi - lo) * axis_px;
                let half = width(&t.label) / 2.0;
                (centre - half, centre + half)
            })
            .collect();
        let fits = |k: usize| {
            spans
                .iter()
                .step_by(k)
                .zip(spans.iter().step_by(k).skip(1))
                .all(|(a, b)| b.0 >= a.1 + LABEL_GAP)
        };
        let k = (1..self.ticks.len()).find(|&k| fits(k)).unwrap_or(1);
        for (i, tick) in self.ticks.iter_mut().enumerate() {
            tick.shown = i % k == 0;
        }
    }
}

impl Ranged for XAxis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let (lo, hi) = self.range;
        let share = (value - lo) / (hi - lo);
        // `as` saturates, so a wild value lands on the edge instead of wrapping.
        limit.0 + (f64::from(limit.1 - limit.0) * share).round() as i32
    }

    /// The ticks for the grid lines and labels (plotters' "bold" points); no light
    /// grid lines in between.
    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            return Vec::new();
        }
        self.ticks.iter().map(|t| t.pos).collect()
    }

    fn range(&self) -> Range<f64> {
        self.range.0..self.range.1
    }
}

impl ValueFormatter<f64> for XAxis {
    fn format_ext(&self, value: &f64) -> String {
        self.ticks
            .iter()
            .find(|t| t.pos == *value && t.shown)
            .map(|t| t.label.clone())
            .unwrap_or_default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use plotters::coord::ranged1d::BoldPoints;

    use super::*;

    #[test]
    fn the_papers_mnist_grid_is_placed_evenly_and_labelled_exactly() {
        let eps = [0.005, 0.01, 0.05, 0.1, 0.15, 0.2];
        let axis = XAxis::new(&eps, &eps).unwrap();
        assert!(axis.categorical());
        assert_eq!(axis.shown_labels(), ["0.005", "0.01", "0.05", "0.1", "0.15", "0.2"]);
        assert_eq!(axis.key_points(BoldPoints(6)), [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert!(axis.key_points(6usize).is_empty(), "no light grid lines");
        // Between two ticks, linear within the gap; beyond the ends, the end gap's slope.
        assert!((axis.position(0.075) - 2.5).abs() < 1e-12);
        assert!((axis.position(0.25) - 6.0).abs() < 1e-12);
        assert!((axis.position(0.0) - -1.0).abs() < 1e-12);
        assert_eq!(axis.format_ext(&3.0), "0.1");
        assert_eq!(axis.format_ext(&2.5), "", "only ticks are labelled");
    }

    #[test]
    fn even_ticks_stay_linear_and_cover_the_data() {
        let axis = XAxis::new(&[0.3, 0.1, 0.2, 0.2, f64::NAN], &[0.1, 0.5]).unwrap();
        assert!(!axis.categorical());
        assert_eq!(axis.len(), 3, "sorted, NaN dropped, duplicates merged");
        assert_eq!(axis.position(0.25), 0.25);
        let r = axis.range();
        assert!(r.start < 0.1 && r.end > 0.5, "{r:?}");
        assert_eq!(axis.map(&r.start, (0, 100)), 0);
        assert_eq!(axis.map(&r.end, (0, 100)), 100);
        assert_eq!(axis.map(&f64::NAN, (0, 100)), 0, "no panic on NaN");
    }

    #[test]
    fn ticks_default_to_the_data_and_nothing_at_all_is_none() {
        let axis = XAxis::new(&[], &[0.2, 0.1, 0.2]).unwrap();
        assert_eq!(axis.shown_labels(), ["0.1", "0.2"]);
        let single = XAxis::new(&[-0.0], &[]).unwrap();
        assert_eq!(single.shown_labels(), ["0"]);
        assert!(single.range().start < 0.0 && single.range().end > 0.0);
        assert!(XAxis::new(&[f64::NAN], &[f64::INFINITY]).is_none());
    }

    #[test]
    fn crowded_labels_are_thinned_with_a_regular_stride() {
        let ticks: Vec<f64> = (0..40).map(|i| f64::from(i) / 40.0).collect();
        let mut axis = XAxis::new(&ticks, &[]).unwrap();
        // Labels are 8 px a character; 40 ticks on 400 px are about 9 px apart. Every
        // 4th label ("0", "0.1", …, three characters each) is the first stride that
        // keeps the labels 10 px apart; every 3rd would put "0.075" next to "0.15".
        axis.thin_labels(|s| 8.0 * s.len() as f64, 400.0);
        let shown = axis.shown_labels();
        assert_eq!(
            shown,
            ["0", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9"]
        );
        assert_eq!(axis.len(), 40, "every tick keeps its grid line");
        assert_eq!(axis.key_points(BoldPoints(40)).len(), 40);
        // Few labels on a wide axis: all shown.
        let mut few = XAxis::new(&[0.1, 0.2, 0.3], &[]).unwrap();
        few.thin_labels(|s| 8.0 * s.len() as f64, 400.0);
        assert_eq!(few.shown_labels().len(), 3);
    }
}

//! Drawing a [`Chart`]: the plan (axis, y range in percent, lines split at missing
//! points, legend width), then the plot, the lines clipped to the y range, the
//! markers, and the legend to the right of the plot.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::axis::XAxis;
use super::{text, text_width, Chart, PlotError, Series, CHART_SIZE};

const TITLE_SIZE: f64 = 24.0;
const LABEL_SIZE: f64 = 15.0;
const DESC_SIZE: f64 = 17.0;
const LEGEND_SIZE: f64 = 15.0;
/// Space around the plot, in pixels.
const MARGIN: u32 = 12;
/// Height of the x axis' tick labels and description.
const X_AREA: u32 = 50;
/// Width of the y axis' tick labels and description.
const Y_AREA: u32 = 72;
/// The legend: sample line length, gap before the label, row height, padding.
const LEGEND_SAMPLE: i32 = 34;
const LEGEND_GAP: i32 = 8;
const LEGEND_ROW: i32 = 24;
const LEGEND_PAD: i32 = 10;
/// Legend width bounds; longer labels are shortened with "…".
const LEGEND_MIN: u32 = 120;
const LEGEND_MAX: u32 = 300;

/// Okabe & Ito's colour-blind-safe palette, without its yellow (too faint on white).
const PALETTE: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
];

/// Marker shapes, cycled independently of the colours (8 against 7), so that series
/// stay distinct in greyscale and the first 56 differ in colour or shape.
#[derive(Debug, Clone, Copy)]
enum Marker {
    Circle,
    Square,
    TriangleUp,
    Diamond,
    TriangleDown,
    Cross,
    OpenCircle,
    OpenSquare,
}

const MARKERS: [Marker; 8] = [
    Marker::Circle,
    Marker::Square,
    Marker::TriangleUp,
    Marker::Diamond,
    Marker::TriangleDown,
    Marker::Cross,
    Marker::OpenCircle,
    Marker::OpenSquare,
];

/// The colour and marker of series `i`.
fn series_style(i: usize) -> (RGBColor, Marker) {
    (PALETTE[i % PALETTE.len()], MARKERS[i % MARKERS.len()])
}

/// Draws a marker centred on the pixel `(x, y)` of `area`.
fn draw_marker<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    (x, y): (i32, i32),
    colour: RGBColor,
    marker: Marker,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    const R: i32 = 5;
    let filled = colour.filled();
    let outline = colour.stroke_width(2);
    match marker {
        Marker::Circle => area.draw(&Circle::new((x, y), R, filled)),
        Marker::OpenCircle => area.draw(&Circle::new((x, y), R, outline)),
        Marker::Square => area.draw(&Rectangle::new(
            [(x - R + 1, y - R + 1), (x + R - 1, y + R - 1)],
            filled,
        )),
        Marker::OpenSquare => area.draw(&Rectangle::new(
            [(x - R + 1, y - R + 1), (x + R - 1, y + R - 1)],
            outline,
        )),
        Marker::TriangleUp => area.draw(&Polygon::new(
            vec![(x, y - R - 1), (x + R + 1, y + R - 1), (x - R - 1, y + R - 1)],
            filled,
        )),
        Marker::TriangleDown => area.draw(&Polygon::new(
            vec![(x, y + R + 1), (x + R + 1, y - R + 1), (x - R - 1, y - R + 1)],
            filled,
        )),
        Marker::Diamond => area.draw(&Polygon::new(
            vec![(x, y - R - 1), (x + R + 1, y), (x, y + R + 1), (x - R - 1, y)],
            filled,
        )),
        Marker::Cross => {
            area.draw(&PathElement::new(vec![(x - R, y - R), (x + R, y + R)], outline))?;
            area.draw(&PathElement::new(vec![(x - R, y + R), (x + R, y - R)], outline))
        }
    }
}

/// A series ready to draw: runs of consecutive finite points as (x position on the
/// axis, y in percent); a missing point ends a run.
struct Line {
    label: String,
    runs: Vec<Vec<(f64, f64)>>,
}

/// Everything about a chart that is decided before drawing.
pub(super) struct ChartPlan {
    axis: XAxis,
    /// The y range in percent.
    y: (f64, f64),
    /// Decimals of the y tick labels.
    y_decimals: usize,
    x_desc: String,
    y_desc: String,
    lines: Vec<Line>,
    legend_width: u32,
}

impl ChartPlan {
    pub(super) fn new(chart: &Chart, path: &Path) -> Result<Self, PlotError> {
        let (lo, hi) = chart.y_range;
        // In percent the range must stay finite, and its ~10 ticks need distinct labels
        // (at most 6 decimals) and distinct f64 values.
        let span = 100.0 * (hi - lo);
        let magnitude = 100.0 * lo.abs().max(hi.abs());
        let drawable = lo.is_finite() && hi.is_finite() && span.is_finite() && span >= 1e-5 && span >= 1e-9 * magnitude;
        if !drawable {
            return Err(PlotError::YRange {
                path: path.to_path_buf(),
                title: chart.title.clone(),
                lo,
                hi,
            });
        }
        let no_data = || PlotError::NoData {
            path: path.to_path_buf(),
            title: chart.title.clone(),
            series: chart.series.len(),
        };
        let sorted: Vec<Vec<(f64, f64)>> = chart.series.iter().map(sorted_points).collect();
        if !sorted.iter().flatten().any(|(_, y)| y.is_finite()) {
            return Err(no_data());
        }
        let xs: Vec<f64> = sorted.iter().flatten().map(|&(x, _)| x).collect();
        let mut axis = XAxis::new(&chart.x_ticks, &xs).ok_or_else(no_data)?;

        let lines: Vec<Line> = chart
            .series
            .iter()
            .zip(&sorted)
            .map(|(series, points)| {
                let mut runs = vec![Vec::new()];
                for &(x, y) in points {
                    match runs.last_mut() {
                        Some(run) if y.is_finite() => run.push((axis.position(x), 100.0 * y)),
                        Some(run) if run.is_empty() => {}
                        _ => runs.push(Vec::new()),
                    }
                }
                runs.retain(|r| !r.is_empty());
                let label = if runs.is_empty() {
                    format!("{} (no data)", series.label)
                } else {
                    series.label.clone()
                };
                Line { label, runs }
            })
            .collect();

        let widest = lines
            .iter()
            .map(|l| text_width(&l.label, LEGEND_SIZE))
            .max()
            .unwrap_or(0);
        let legend_width =
            (widest + (LEGEND_SAMPLE + 2 * LEGEND_GAP + 2 * LEGEND_PAD) as u32).clamp(LEGEND_MIN, LEGEND_MAX);
        let label_room = legend_width - (LEGEND_SAMPLE + 2 * LEGEND_GAP + 2 * LEGEND_PAD) as u32;
        let lines = lines
            .into_iter()
            .map(|l| Line {
                label: shorten(&l.label, label_room, LEGEND_SIZE),
                runs: l.runs,
            })
            .collect();

        let plot_width = CHART_SIZE.0.saturating_sub(legend_width + 2 * MARGIN + Y_AREA + 10);
        axis.thin_labels(|s| f64::from(text_width(s, LABEL_SIZE)), f64::from(plot_width));

        let y = (100.0 * lo, 100.0 * hi);
        // plotters puts about ten y ticks on "nice" numbers; show as many decimals as
        // their step needs.
        let step = (y.1 - y.0) / 10.0;
        let y_decimals = if step >= 1.0 {
            0
        } else {
            (-step.log10()).ceil().clamp(0.0, 6.0) as usize
        };
        let mut x_desc = chart.x_label.clone();
        if axis.categorical() {
            x_desc.push_str(if x_desc.is_empty() {
                "not to scale"
            } else {
                " — not to scale"
            });
        }
        let y_desc = if chart.y_label.is_empty() {
            "%".to_string()
        } else {
            format!("{} (%)", chart.y_label)
        };
        Ok(Self {
            axis,
            y,
            y_decimals,
            x_desc,
            y_desc,
            lines,
            legend_width,
        })
    }
}

/// The series' points with a finite x, in order of x (stable, so equal x keep the
/// caller's order).
fn sorted_points(series: &Series) -> Vec<(f64, f64)> {
    let mut points: Vec<(f64, f64)> = series.points.iter().copied().filter(|(x, _)| x.is_finite()).collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    points
}

/// `s`, cut and ended with "…" until it is at most `room` pixels wide at `size`.
fn shorten(s: &str, room: u32, size: f64) -> String {
    if text_width(s, size) <= room {
        return s.to_string();
    }
    // No visible glyph is narrower than a pixel: start from at most `room` characters,
    // so that an absurdly long label costs no more than a short one.
    let mut chars: Vec<char> = s.chars().take(room as usize).collect();
    while !chars.is_empty() {
        chars.pop();
        let cut: String = chars.iter().chain(std::iter::once(&'…')).collect();
        if text_width(&cut, size) <= room {
            return cut;
        }
    }
    "…".to_string()
}

/// The pieces of a polyline inside `lo ≤ y ≤ hi`: each segment is clipped, and the
/// polyline is split where it leaves the band. Points are (x, y).
fn clip_run(run: &[(f64, f64)], (lo, hi): (f64, f64)) -> Vec<Vec<(f64, f64)>> {
    let mut pieces = Vec::new();
    let mut current: Vec<(f64, f64)> = Vec::new();
    for pair in run.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let dy = b.1 - a.1;
        let (t0, t1) = if dy == 0.0 {
            if (lo..=hi).contains(&a.1) {
                (0.0, 1.0)
            } else {
                (1.0, 0.0)
            }
        } else {
            let (ta, tb) = ((lo - a.1) / dy, (hi - a.1) / dy);
            (ta.min(tb).max(0.0), ta.max(tb).min(1.0))
        };
        if t0 > t1 {
            if current.len() > 1 {
                pieces.push(std::mem::take(&mut current));
            }
            current.clear();
            continue;
        }
        let at = |t: f64| (a.0 + t * (b.0 - a.0), a.1 + t * dy);
        if t0 > 0.0 || current.is_empty() {
            if current.len() > 1 {
                pieces.push(std::mem::take(&mut current));
            }
            current = vec![at(t0)];
        }
        current.push(at(t1));
        if t1 < 1.0 {
            pieces.push(std::mem::take(&mut current));
        }
    }
    if current.len() > 1 {
        pieces.push(current);
    }
    pieces
}

/// Draws the whole chart on `root`.
pub(super) fn draw_chart<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    chart: &Chart,
    plan: &ChartPlan,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let body = if chart.title.is_empty() {
        root.margin(MARGIN, 0, 0, 0)
    } else {
        root.titled(&chart.title, text(TITLE_SIZE))?
    };
    let (width, _) = body.dim_in_pixel();
    let (plot_area, legend_area) = body.split_horizontally(width.saturating_sub(plan.legend_width));

    let mut cc = ChartBuilder::on(&plot_area)
        .margin(MARGIN)
        .margin_right(2 * MARGIN)
        .x_label_area_size(X_AREA)
        .y_label_area_size(Y_AREA)
        .build_cartesian_2d(plan.axis.clone(), plan.y.0..plan.y.1)?;
    let y_format = |v: &f64| format!("{v:.*}", plan.y_decimals);
    cc.configure_mesh()
        .x_labels(plan.axis.len())
        .x_max_light_lines(0)
        .y_labels(11)
        .y_max_light_lines(1)
        .y_label_formatter(&y_format)
        .x_desc(plan.x_desc.as_str())
        .y_desc(plan.y_desc.as_str())
        .label_style(text(LABEL_SIZE))
        .axis_desc_style(text(DESC_SIZE))
        .bold_line_style(RGBColor(205, 205, 205))
        .light_line_style(RGBColor(238, 238, 238))
        .draw()?;

    for (i, line) in plan.lines.iter().enumerate() {
        let (colour, _) = series_style(i);
        for run in &line.runs {
            for piece in clip_run(run, plan.y) {
                cc.draw_series(LineSeries::new(piece, colour.stroke_width(2)))?;
            }
        }
    }
    // Markers after every line, so that no line hides another series' marker.
    for (i, line) in plan.lines.iter().enumerate() {
        let (colour, marker) = series_style(i);
        for &(x, y) in line.runs.iter().flatten() {
            if (plan.y.0..=plan.y.1).contains(&y) {
                draw_marker(root, cc.backend_coord(&(x, y)), colour, marker)?;
            }
        }
    }
    draw_legend(&legend_area, plan)?;
    root.present()
}

/// The legend: a framed list, one row per series with its line, marker and label.
/// When the rows do not all fit under each other, the last one that fits says how
/// many series are left out.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    plan: &ChartPlan,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let (width, height) = area.dim_in_pixel();
    let top = MARGIN as i32;
    let room = (height as i32 - top - LEGEND_PAD - MARGIN as i32) / LEGEND_ROW;
    let rows = plan.lines.len().min(usize::try_from(room).unwrap_or(0));
    if rows == 0 {
        return Ok(());
    }
    let left_out = plan.lines.len() - rows;
    let bottom = top + rows as i32 * LEGEND_ROW + LEGEND_PAD;
    area.draw(&Rectangle::new(
        [(0, top), (width as i32 - MARGIN as i32, bottom)],
        RGBColor(160, 160, 160).stroke_width(1),
    ))?;
    let label_style = text(LEGEND_SIZE).pos(Pos::new(HPos::Left, VPos::Center));
    let x0 = LEGEND_PAD;
    let row_y = |i: usize| top + LEGEND_PAD / 2 + LEGEND_ROW / 2 + i as i32 * LEGEND_ROW;
    for (i, line) in plan.lines.iter().enumerate().take(rows - usize::from(left_out > 0)) {
        let (colour, marker) = series_style(i);
        let y = row_y(i);
        area.draw(&PathElement::new(
            vec![(x0, y), (x0 + LEGEND_SAMPLE, y)],
            colour.stroke_width(2),
        ))?;
        draw_marker(area, (x0 + LEGEND_SAMPLE / 2, y), colour, marker)?;
        area.draw_text(&line.label, &label_style, (x0 + LEGEND_SAMPLE + LEGEND_GAP, y))?;
    }
    if left_out > 0 {
        let more = format!("… and {} more", left_out + 1);
        area.draw_text(&more, &label_style, (x0, row_y(rows - 1)))?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::load_font;
    use super::*;

    #[test]
    fn clipping_keeps_the_part_of_a_line_inside_the_band() {
        let inside = clip_run(&[(0.0, 10.0), (1.0, 20.0), (2.0, 30.0)], (0.0, 100.0));
        assert_eq!(inside, vec![vec![(0.0, 10.0), (1.0, 20.0), (2.0, 30.0)]]);

        // Up through the top, then back down: two pieces, cut at y = 100.
        let out = clip_run(&[(0.0, 80.0), (1.0, 120.0), (2.0, 80.0)], (0.0, 100.0));
        assert_eq!(
            out,
            vec![vec![(0.0, 80.0), (0.5, 100.0)], vec![(1.5, 100.0), (2.0, 80.0)]]
        );

        // Entirely outside: nothing.
        assert!(clip_run(&[(0.0, 120.0), (1.0, 130.0)], (0.0, 100.0)).is_empty());
        // A flat line on the edge stays.
        assert_eq!(clip_run(&[(0.0, 100.0), (1.0, 100.0)], (0.0, 100.0)).len(), 1);
    }

    #[test]
    fn a_missing_point_breaks_the_line_and_points_are_drawn_in_order_of_x() {
        let chart = Chart {
            title: "t".into(),
            x_label: "ε".into(),
            y_label: "Accuracy".into(),
            x_ticks: vec![0.1, 0.2, 0.3, 0.4],
            series: vec![
                Series {
                    label: "a".into(),
                    points: vec![(0.4, 0.4), (0.1, 0.1), (0.3, f64::NAN), (0.2, 0.2), (f64::NAN, 0.5)],
                },
                Series {
                    label: "b".into(),
                    points: vec![],
                },
            ],
            y_range: (0.0, 1.0),
        };
        let plan = ChartPlan::new(&chart, Path::new("x.svg")).unwrap();
        assert!(!plan.axis.categorical());
        let runs = &plan.lines[0].runs;
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].len(), 2);
        assert!((runs[0][1].1 - 20.0).abs() < 1e-9, "y is shown in percent");
        assert_eq!(runs[1].len(), 1);
        assert_eq!(plan.lines[1].label, "b (no data)");
        assert_eq!(plan.y_desc, "Accuracy (%)");
    }

    #[test]
    fn bad_y_ranges_and_charts_without_data_are_refused() {
        let mut chart = Chart {
            title: "t".into(),
            x_label: String::new(),
            y_label: String::new(),
            x_ticks: vec![],
            series: vec![Series {
                label: "a".into(),
                points: vec![(0.1, 0.5)],
            }],
            y_range: (1.0, 0.0),
        };
        let path = Path::new("out.svg");
        let err = ChartPlan::new(&chart, path).err().unwrap();
        assert!(matches!(err, PlotError::YRange { .. }), "{err}");
        assert!(err.to_string().starts_with("out.svg: "), "{err}");
        chart.y_range = (0.0, f64::NAN);
        assert!(ChartPlan::new(&chart, path).is_err());

        chart.y_range = (0.0, 1.0);
        chart.series[0].points = vec![(0.1, f64::NAN), (f64::INFINITY, 0.3)];
        let err = ChartPlan::new(&chart, path).err().unwrap();
        assert!(matches!(err, PlotError::NoData { .. }), "{err}");
        chart.series.clear();
        assert!(ChartPlan::new(&chart, path).is_err());
    }

    #[test]
    fn long_legend_labels_are_shortened_to_fit() {
        load_font(Path::new("x")).unwrap();
        let long = "a very long label ".repeat(10);
        let short = shorten(&long, 100, LEGEND_SIZE);
        assert!(short.ends_with('…'));
        assert!(text_width(&short, LEGEND_SIZE) <= 100);
        assert!(text_width(&short, LEGEND_SIZE) > 60, "cut no more than needed");
        assert_eq!(shorten("RLH", 100, LEGEND_SIZE), "RLH");
    }

    #[test]
    fn a_legend_too_long_for_the_chart_says_how_many_series_it_leaves_out() {
        load_font(Path::new("x")).unwrap();
        let chart = Chart {
            title: "many".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            x_ticks: vec![0.0, 1.0],
            series: (0..40)
                .map(|i| Series {
                    label: format!("s{i}"),
                    points: vec![(0.0, 0.5), (1.0, f64::from(i) / 40.0)],
                })
                .collect(),
            y_range: (0.0, 1.0),
        };
        let plan = ChartPlan::new(&chart, Path::new("x.svg")).unwrap();
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, CHART_SIZE).into_drawing_area();
            draw_chart(&root, &chart, &plan).unwrap();
        }
        let texts: Vec<&str> = svg
            .split("<text")
            .skip(1)
            .filter_map(|t| Some(t[t.find('>')? + 1..t.find("</text>")?].trim()))
            .collect();
        let shown = (0..40).filter(|i| texts.contains(&format!("s{i}").as_str())).count();
        assert!(shown > 5 && shown < 40, "{shown} legend rows");
        let more = format!("… and {} more", 40 - shown);
        assert!(texts.contains(&more.as_str()), "{more} missing: {texts:?}");
        assert!(texts.contains(&"s0") && !texts.contains(&"s39"));
    }

    #[test]
    fn extreme_ranges_are_drawn_or_refused_without_panicking() {
        load_font(Path::new("x")).unwrap();
        let draw = |x_ticks: Vec<f64>, points: Vec<(f64, f64)>, y_range| {
            let chart = Chart {
                title: "edge".into(),
                x_label: "x".into(),
                y_label: "y".into(),
                x_ticks,
                series: vec![Series {
                    label: "a".into(),
                    points,
                }],
                y_range,
            };
            let plan = ChartPlan::new(&chart, Path::new("x.svg"))?;
            let mut svg = String::new();
            let root = SVGBackend::with_string(&mut svg, CHART_SIZE).into_drawing_area();
            draw_chart(&root, &chart, &plan).map_err(super::super::render_error(Path::new("x.svg")))
        };
        let p = vec![(0.1, 0.5), (0.2, 0.6)];
        assert!(draw(vec![0.1, 0.2], p.clone(), (0.5, 0.5 + 2e-7)).is_ok());
        assert!(
            draw(vec![0.1, 0.2], p.clone(), (0.5, 0.5 + 1e-8)).is_err(),
            "too narrow"
        );
        assert!(draw(vec![0.1, 0.2], p.clone(), (0.0, 1e300)).is_ok());
        assert!(
            draw(vec![0.1, 0.2], p.clone(), (-1e307, 1e307)).is_err(),
            "overflows in percent"
        );
        assert!(
            draw(vec![0.1, 0.2], p.clone(), (1.0, 1.0 + 1e-17)).is_err(),
            "no distinct ticks"
        );
        assert!(draw(vec![1e300, -1e300, 0.0], p.clone(), (0.0, 1.0)).is_ok());
        assert!(draw(vec![], vec![(5e-324, 0.5)], (0.0, 1.0)).is_ok());
        assert!(draw(vec![0.0, 1e-300, 1.0], p, (0.0, 1.0)).is_ok());
    }
}

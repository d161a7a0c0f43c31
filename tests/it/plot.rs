//! The report's figures as a reader gets them: the PNG decoded (size, colours, the
//! images scaled block for block), the SVG read as text (title, axis labels, legend,
//! tick labels), and refused input leaving no file behind.

use std::collections::HashSet;
use std::path::Path;

use image::RgbImage;
use ndarray::Array3;
use nnmend::report::plot::{write_chart, write_grid, Cell, Chart, PlotError, Series, CHART_SIZE};

use super::common::tempdir;

const EPS: [f64; 6] = [0.005, 0.01, 0.05, 0.1, 0.15, 0.2];

fn accuracy_chart() -> Chart {
    let curve = |start: f64, fall: f64| EPS.iter().map(|&e| (e, start * (-fall * e).exp())).collect();
    Chart {
        title: "Accuracy & robustness <MNIST>".into(),
        x_label: "ε (pixel space)".into(),
        y_label: "Accuracy".into(),
        x_ticks: EPS.to_vec(),
        series: vec![
            Series {
                label: "NN on NADV".into(),
                points: curve(0.99, 25.0),
            },
            Series {
                label: "LH on HADV".into(),
                points: curve(0.98, 15.0),
            },
            Series {
                label: "KH on HADV".into(),
                points: curve(0.99, 8.0),
            },
            Series {
                label: "RLH on RHADV".into(),
                points: curve(0.97, 2.0),
            },
        ],
        y_range: (0.0, 1.0),
    }
}

fn read_png(path: &Path) -> RgbImage {
    image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8()
}

/// The texts of the SVG's `<text>` elements, as written (XML-escaped).
fn svg_texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| {
            let start = t.find('>')? + 1;
            let end = t.find("</text>")?;
            Some(t[start..end].trim().to_string())
        })
        .collect()
}

/// The colours of the SVG's 2-pixel polylines (the series' lines and legend samples).
fn series_colours(svg: &str) -> HashSet<[u8; 3]> {
    svg.split("<polyline")
        .skip(1)
        .filter(|p| p.contains("stroke-width=\"2\""))
        .filter_map(|p| {
            let hex = p.split("stroke=\"#").nth(1)?.get(..6)?;
            let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).ok();
            Some([byte(0)?, byte(2)?, byte(4)?])
        })
        .collect()
}

fn count(png: &RgbImage, colour: [u8; 3]) -> usize {
    png.pixels().filter(|p| p.0 == colour).count()
}

#[test]
fn a_chart_is_written_as_svg_and_png_that_a_person_can_read() {
    let dir = tempdir();
    let (svg_path, png_path) = (dir.path().join("acc.svg"), dir.path().join("acc.png"));
    let chart = accuracy_chart();
    write_chart(&chart, &svg_path, &png_path).unwrap();

    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
    assert!(svg.contains("font-family=\"sans-serif\""));
    let texts = svg_texts(&svg);
    let has = |s: &str| texts.iter().any(|t| t == s);
    assert!(
        has("Accuracy &amp; robustness &lt;MNIST&gt;"),
        "escaped title: {texts:?}"
    );
    assert!(has("ε (pixel space) — not to scale"), "{texts:?}");
    assert!(has("Accuracy (%)"), "{texts:?}");
    for series in &chart.series {
        assert!(has(&series.label), "legend lacks {}: {texts:?}", series.label);
    }
    for tick in ["0.005", "0.01", "0.05", "0.1", "0.15", "0.2"] {
        assert!(has(tick), "x tick {tick} unlabelled: {texts:?}");
    }
    for tick in ["0", "50", "100"] {
        assert!(has(tick), "y tick {tick} unlabelled: {texts:?}");
    }

    let png = read_png(&png_path);
    assert_eq!(png.dimensions(), CHART_SIZE);
    let distinct: HashSet<[u8; 3]> = png.pixels().map(|p| p.0).collect();
    assert!(distinct.len() > 20, "{} colours: blank?", distinct.len());
    let colours = series_colours(&svg);
    assert_eq!(colours.len(), chart.series.len(), "one colour per series: {colours:?}");
    for colour in colours {
        let n = count(&png, colour);
        assert!(n > 300, "series colour {colour:?} drawn on only {n} pixels of the PNG");
    }
    // No temporary files left next to the figures.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

#[test]
fn gaps_and_empty_series_are_drawn_without_fuss() {
    let dir = tempdir();
    let mut chart = accuracy_chart();
    chart.x_ticks.clear();
    chart.series[0].points[2].1 = f64::NAN;
    chart.series[1].points.clear();
    chart.series[2].points.push((f64::NAN, 0.5));
    let (svg_path, png_path) = (dir.path().join("c.svg"), dir.path().join("c.png"));
    write_chart(&chart, &svg_path, &png_path).unwrap();
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    let texts = svg_texts(&svg);
    assert!(texts.iter().any(|t| t == "LH on HADV (no data)"), "{texts:?}");
    assert!(texts.iter().any(|t| t == "0.005"), "ticks from the data: {texts:?}");
    assert_eq!(read_png(&png_path).dimensions(), CHART_SIZE);
}

#[test]
fn a_refused_chart_writes_nothing() {
    let dir = tempdir();
    let (svg_path, png_path) = (dir.path().join("c.svg"), dir.path().join("c.png"));
    let mut chart = accuracy_chart();
    chart.y_range = (0.5, 0.5);
    let err = write_chart(&chart, &svg_path, &png_path).unwrap_err();
    assert!(matches!(err, PlotError::YRange { .. }), "{err}");
    assert!(err.to_string().contains("c.svg"), "{err}");

    chart.y_range = (0.0, 1.0);
    for s in &mut chart.series {
        s.points.iter_mut().for_each(|p| p.1 = f64::NAN);
    }
    let err = write_chart(&chart, &svg_path, &png_path).unwrap_err();
    assert!(matches!(err, PlotError::NoData { series: 4, .. }), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// A 28×28 cell of one colour.
fn cell(rgb: [f32; 3], caption: &str, wrong: bool) -> Cell {
    Cell {
        image: Array3::from_shape_fn((3, 28, 28), |(c, _, _)| rgb[c]),
        caption: caption.into(),
        wrong,
    }
}

fn headers() -> Vec<String> {
    vec!["clean".into(), "ε = 0.05".into(), "ε = 0.1".into()]
}

#[test]
fn a_grid_shows_each_image_scaled_up_with_wrong_captions_in_red() {
    let dir = tempdir();
    let marked = [0.2, 0.6, 0.4]; // (51, 153, 102) after scaling to bytes
    let other = [0.0, 0.0, 0.8];
    let grey = Cell {
        image: Array3::from_elem((1, 28, 28), 0.3),
        caption: "1 → 1".into(),
        wrong: false,
    };
    let rows = vec![
        vec![
            cell(marked, "7 → 7", false),
            cell(other, "7 → 7", false),
            cell(other, "7 → 3", true),
        ],
        vec![grey, cell(other, "2 → 2", false), cell(other, "2 → 8", true)],
    ];
    let path = dir.path().join("grid.png");
    write_grid(&headers(), &rows, &path).unwrap();
    let png = read_png(&path);

    // The marked 28×28 image is one 112×112 block: scaled by 4, whole, unblurred.
    let hits: Vec<(u32, u32)> = png
        .enumerate_pixels()
        .filter(|(_, _, p)| p.0 == [51, 153, 102])
        .map(|(x, y, _)| (x, y))
        .collect();
    assert_eq!(hits.len(), 112 * 112);
    let (x0, y0) = hits[0];
    assert!(hits
        .iter()
        .all(|&(x, y)| (x0..x0 + 112).contains(&x) && (y0..y0 + 112).contains(&y)));
    assert_eq!(count(&png, [0, 0, 204]), 4 * 112 * 112);
    // Grey images are grey (anti-aliased text adds a few pixels of that grey).
    let grey = count(&png, [77, 77, 77]);
    assert!((112 * 112..112 * 112 + 200).contains(&grey), "{grey} grey pixels");
    let (w, h) = png.dimensions();
    assert!((3 * 112..3 * 112 + 3 * 100).contains(&w), "width {w}");
    assert!((2 * 112..2 * 112 + 200).contains(&h), "height {h}");

    let reddish = |png: &RgbImage| {
        png.pixels()
            .filter(|p| p.0[0] > 150 && p.0[1] < 80 && p.0[2] < 80)
            .count()
    };
    assert!(reddish(&png) > 20, "wrong captions are red");
    // The same grid with nothing marked wrong has no red at all.
    let right: Vec<Vec<Cell>> = rows
        .into_iter()
        .map(|row| row.into_iter().map(|c| Cell { wrong: false, ..c }).collect())
        .collect();
    write_grid(&headers(), &right, &path).unwrap();
    assert_eq!(reddish(&read_png(&path)), 0);
}

#[test]
fn malformed_grids_are_refused_and_write_nothing() {
    let dir = tempdir();
    let path = dir.path().join("grid.png");
    let short = vec![
        vec![
            cell([0.0; 3], "a", false),
            cell([0.0; 3], "b", false),
            cell([0.0; 3], "c", false),
        ],
        vec![cell([0.0; 3], "a", false), cell([0.0; 3], "b", false)],
    ];
    let err = write_grid(&headers(), &short, &path).unwrap_err();
    assert!(
        matches!(
            err,
            PlotError::RowLength {
                row: 1,
                cells: 2,
                headers: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("grid.png"), "{err}");

    let mut bad = vec![vec![
        cell([0.0; 3], "a", false),
        cell([0.0; 3], "b", false),
        cell([0.0; 3], "c", false),
    ]];
    bad[0][2].image = Array3::zeros((2, 28, 28));
    let err = write_grid(&headers(), &bad, &path).unwrap_err();
    assert!(
        matches!(
            err,
            PlotError::Channels {
                row: 0,
                column: 2,
                channels: 2,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("row 0, column 2"), "{err}");

    let err = write_grid(&headers(), &[], &path).unwrap_err();
    assert!(matches!(err, PlotError::EmptyGrid { .. }), "{err}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no file, no temporary"
    );
}

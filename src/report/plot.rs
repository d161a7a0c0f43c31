//! The report's figures, drawn with plotters: accuracy against ε as a line chart (the
//! analogue of Fig. 2, left, and Fig. 3 of Guidotti & Leofante 2020), and grids of
//! example images with their predictions.
//!
//! A chart's y values are shares in `[0, 1]` (accuracies, as everywhere in nnmend's
//! JSON); the chart shows them in percent and adds the unit to the y axis label. The x
//! axis has a tick at each of the caller's `x_ticks`, labelled with that exact value.
//! When the ticks are roughly evenly spaced (the smallest gap between neighbours is at
//! least half the mean gap) the axis is linear. Otherwise, as for the paper's MNIST
//! grid (0.005, 0.01, 0.05, 0.1, 0.15, 0.2), a linear axis would pile the small radii
//! on top of each other, so the ticks are placed evenly instead, points between two
//! ticks are interpolated linearly within that gap, and the x axis label ends with
//! "— not to scale". The legend sits to the right of the plot, where it hides no line;
//! each series has its own colour and marker shape, so a greyscale print still tells
//! them apart.
//!
//! A figure is rendered completely in memory before any file is written, and each
//! file is then written atomically ([`crate::atomic::write_with`]): invalid input
//! leaves no file behind, and a reader never sees half a figure. PNG text is drawn
//! with DejaVu Sans, compiled into the library (`assets/fonts/`, with its licence), so
//! figures need no system font; SVG text names the `sans-serif` family and embeds
//! nothing.

mod axis;
mod chart;
mod grid;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};
use plotters::backend::RGBPixel;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use chart::{draw_chart, ChartPlan};
pub use grid::{write_grid, Cell};

/// Width and height of a chart: pixels in the PNG, user units in the SVG.
pub const CHART_SIZE: (u32, u32) = (800, 500);

/// One line of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The name shown in the legend, e.g. `RLH on RHADV`.
    pub label: String,
    /// `(x, y)` points, y a share in `[0, 1]`. They are drawn in order of x; a point
    /// with a non-finite y breaks the line there, one with a non-finite x is skipped.
    pub points: Vec<(f64, f64)>,
}

/// Accuracy (or any share) against ε.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    /// The title over the chart.
    pub title: String,
    /// The x axis label, e.g. `ε (L∞, pixel space [0, 1])`.
    pub x_label: String,
    /// The y axis label without its unit, e.g. `Accuracy`; the chart appends ` (%)`.
    pub y_label: String,
    /// Where the x axis has ticks, each labelled with its exact value. Non-finite
    /// values are ignored, duplicates merged; when none is left, the points' distinct
    /// x values are the ticks.
    pub x_ticks: Vec<f64>,
    /// The lines, one legend entry each. A series without any finite point is listed
    /// in the legend as "(no data)".
    pub series: Vec<Series>,
    /// The y axis range as shares, e.g. `(0.0, 1.0)` for 0–100 %; it must be finite
    /// with `lo < hi` and at least 1e-7 wide. Parts of lines outside it are clipped
    /// away.
    pub y_range: (f64, f64),
}

/// Why a figure could not be drawn or written; every variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The file could not be written.
    #[error("{path}")]
    Io {
        /// The figure being written.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// plotters failed to draw the figure.
    #[error("{path}: drawing the figure failed: {message}")]
    Render {
        /// The figure being drawn.
        path: PathBuf,
        /// plotters' message.
        message: String,
    },
    /// The PNG encoder failed.
    #[error("{path}: encoding the PNG failed")]
    Encode {
        /// The figure being encoded.
        path: PathBuf,
        /// The encoder's error.
        source: image::ImageError,
    },
    /// The embedded font could not be parsed (a corrupt build).
    #[error("{path}: the embedded font DejaVu Sans could not be loaded")]
    Font {
        /// The figure that needed it.
        path: PathBuf,
    },
    /// The chart's y range is not a finite interval `lo < hi`, or too narrow to label
    /// (under 1e-7, or under a billionth of its ends' magnitude).
    #[error("{path}: chart \"{title}\": y range [{lo}, {hi}] is not a finite interval lo < hi at least 1e-7 wide")]
    YRange {
        /// The chart's first output file.
        path: PathBuf,
        /// The chart's title.
        title: String,
        /// The lower end given.
        lo: f64,
        /// The upper end given.
        hi: f64,
    },
    /// No series of the chart has a single finite point.
    #[error("{path}: chart \"{title}\" has no finite point in any of its {series} series")]
    NoData {
        /// The chart's first output file.
        path: PathBuf,
        /// The chart's title.
        title: String,
        /// How many series it has.
        series: usize,
    },
    /// A grid without rows or without columns.
    #[error("{path}: the example grid has {rows} rows and {columns} column headers; it needs at least one of each")]
    EmptyGrid {
        /// The grid's file.
        path: PathBuf,
        /// The number of rows given.
        rows: usize,
        /// The number of headers given.
        columns: usize,
    },
    /// A grid row whose length differs from the number of headers.
    #[error("{path}: row {row} of the example grid has {cells} cells, but there are {headers} column headers")]
    RowLength {
        /// The grid's file.
        path: PathBuf,
        /// The row, counted from 0.
        row: usize,
        /// Its number of cells.
        cells: usize,
        /// The number of headers.
        headers: usize,
    },
    /// A grid image with a channel count other than 1 or 3.
    #[error("{path}: row {row}, column {column} of the example grid: the image has {channels} channels; 1 (grey) or 3 (RGB) expected, as [C, H, W]")]
    Channels {
        /// The grid's file.
        path: PathBuf,
        /// The row, counted from 0.
        row: usize,
        /// The column, counted from 0.
        column: usize,
        /// The channel count found.
        channels: usize,
    },
    /// A grid image with no pixel.
    #[error("{path}: row {row}, column {column} of the example grid: the image is {height}×{width} pixels")]
    EmptyImage {
        /// The grid's file.
        path: PathBuf,
        /// The row, counted from 0.
        row: usize,
        /// The column, counted from 0.
        column: usize,
        /// Its height.
        height: usize,
        /// Its width.
        width: usize,
    },
    /// A grid too large to hold in memory as one picture.
    #[error("{path}: the example grid would be {width}×{height} pixels, more than {limit} pixels in all")]
    TooLarge {
        /// The grid's file.
        path: PathBuf,
        /// The width it would have.
        width: u64,
        /// The height it would have.
        height: u64,
        /// The most pixels a grid may have.
        limit: u64,
    },
}

/// Writes `chart` as SVG and PNG (each [`CHART_SIZE`]), each atomically. Both are
/// rendered before either is written, so invalid input writes neither; if writing the
/// PNG fails, the SVG is already in place.
pub fn write_chart(chart: &Chart, svg: &Path, png: &Path) -> Result<(), PlotError> {
    load_font(svg)?;
    let plan = ChartPlan::new(chart, svg)?;

    let mut svg_text = String::new();
    {
        let root = SVGBackend::with_string(&mut svg_text, CHART_SIZE).into_drawing_area();
        draw_chart(&root, chart, &plan).map_err(render_error(svg))?;
    }
    let rgb = render_bitmap(CHART_SIZE, png, |root| draw_chart(root, chart, &plan))?;
    let png_bytes = encode_png(&rgb, CHART_SIZE, png)?;

    write_file(svg, svg_text.as_bytes())?;
    write_file(png, &png_bytes)
}

/// The bytes of DejaVu Sans, see `assets/fonts/README.md`.
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// Registers the embedded font as plotters' `sans-serif`, once per process. plotters
/// needs it for the bitmap's glyphs and also for the SVG's layout (text sizes).
fn load_font(path: &Path) -> Result<(), PlotError> {
    static LOADED: OnceLock<bool> = OnceLock::new();
    let loaded = *LOADED.get_or_init(|| register_font("sans-serif", FontStyle::Normal, FONT).is_ok());
    if loaded {
        Ok(())
    } else {
        Err(PlotError::Font {
            path: path.to_path_buf(),
        })
    }
}

/// Black text of the given size in the embedded font.
fn text(size: f64) -> TextStyle<'static> {
    TextStyle::from((FontFamily::SansSerif, size).into_font()).color(&BLACK)
}

/// The width of `s` in pixels at `size`, 0 when it cannot be measured.
fn text_width(s: &str, size: f64) -> u32 {
    (FontFamily::SansSerif, size)
        .into_font()
        .box_size(s)
        .map_or(0, |(w, _)| w)
}

/// Turns a plotters error into a [`PlotError::Render`] naming `path`.
fn render_error<E: std::error::Error + Send + Sync>(path: &Path) -> impl Fn(DrawingAreaErrorKind<E>) -> PlotError + '_ {
    move |e| PlotError::Render {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// What drawing on a bitmap fails with (plotters-bitmap's error type is not public).
type BitmapError = DrawingAreaErrorKind<<BitMapBackend<'static, RGBPixel> as DrawingBackend>::ErrorType>;

/// Runs `draw` on an in-memory RGB bitmap of `size` and returns its pixels.
fn render_bitmap(
    (width, height): (u32, u32),
    path: &Path,
    draw: impl for<'b> FnOnce(&DrawingArea<BitMapBackend<'b, RGBPixel>, Shift>) -> Result<(), BitmapError>,
) -> Result<Vec<u8>, PlotError> {
    let mut rgb = vec![255u8; width as usize * height as usize * 3];
    {
        let backend = BitMapBackend::<RGBPixel>::with_buffer_and_format(&mut rgb, (width, height)).map_err(|e| {
            PlotError::Render {
                path: path.to_path_buf(),
                message: e.to_string(),
            }
        })?;
        let root = backend.into_drawing_area();
        draw(&root).map_err(render_error(path))?;
    }
    Ok(rgb)
}

/// PNG-encodes an RGB bitmap.
fn encode_png(rgb: &[u8], (width, height): (u32, u32), path: &Path) -> Result<Vec<u8>, PlotError> {
    let mut bytes = Vec::new();
    PngEncoder::new(&mut bytes)
        .write_image(rgb, width, height, ExtendedColorType::Rgb8)
        .map_err(|source| PlotError::Encode {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(bytes)
}

/// Writes `bytes` to `path` atomically.
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), PlotError> {
    let io = |source| PlotError::Io {
        path: path.to_path_buf(),
        source,
    };
    crate::atomic::write_with(path, io, |f| f.write_all(bytes).map_err(io))
}

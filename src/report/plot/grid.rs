//! Grids of example images: one column per condition (e.g. "clean", "ε = 0.05"), one
//! row per sample, each image with its prediction as a caption (e.g. "7 → 3"), red
//! when the prediction is wrong. Images are scaled up by a whole factor, so a 28×28
//! MNIST digit shows as crisp 112×112 pixel blocks, never blurred.

use std::path::Path;

use ndarray::Array3;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{encode_png, load_font, render_bitmap, text, text_width, write_file, PlotError};

/// One cell of an example grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    /// The image, `[C, H, W]` with C = 1 (grey) or 3 (RGB), values in `[0, 1]`
    /// (others are clamped, NaN shows as black).
    pub image: Array3<f32>,
    /// The text under the image, e.g. `7 → 3`.
    pub caption: String,
    /// Draws the caption in red, e.g. for a wrong prediction.
    pub wrong: bool,
}

/// Images are scaled up by the smallest whole factor that makes them this many pixels
/// on their longer side (up to [`MAX_SCALE`]); larger images keep their size.
const TARGET_SIDE: usize = 112;
const MAX_SCALE: usize = 16;
/// The most pixels a grid may have (about 150 MB of RGB in memory).
const MAX_PIXELS: u64 = 50_000_000;
const PAD: u64 = 12;
const HEADER_SIZE: f64 = 17.0;
const CAPTION_SIZE: f64 = 15.0;
const HEADER_HEIGHT: u64 = 30;
const CAPTION_HEIGHT: u64 = 26;
const WRONG: RGBColor = RGBColor(200, 0, 0);
const FRAME: RGBColor = RGBColor(170, 170, 170);

/// Writes a grid of examples as a PNG, atomically: `rows[r][c]` under `headers[c]`.
/// Every row must have one cell per header. Images may differ in size; each is
/// centred in a box as large as the largest. Invalid input writes no file.
pub fn write_grid(headers: &[String], rows: &[Vec<Cell>], png: &Path) -> Result<(), PlotError> {
    load_font(png)?;
    let layout = Layout::new(headers, rows, png)?;
    let size = layout.size;
    let mut rgb = render_bitmap(size, png, |root| {
        root.fill(&WHITE)?;
        let centre = Pos::new(HPos::Center, VPos::Center);
        let header_style = text(HEADER_SIZE).pos(centre);
        let caption_style = text(CAPTION_SIZE).pos(centre);
        let wrong_style = text(CAPTION_SIZE).color(&WRONG).pos(centre);
        for (c, header) in headers.iter().enumerate() {
            let (x, _) = layout.image_origin(0, c);
            let middle = layout.coord(x + layout.box_w / 2);
            let y = layout.coord(PAD + HEADER_HEIGHT / 2);
            root.draw_text(header, &header_style, (middle, y))?;
        }
        for (r, row) in rows.iter().enumerate() {
            for (c, cell) in row.iter().enumerate() {
                let (x, y) = layout.image_origin(r, c);
                let (x0, y0) = (layout.coord(x), layout.coord(y));
                let (x1, y1) = (layout.coord(x + layout.box_w), layout.coord(y + layout.box_h));
                root.draw(&Rectangle::new([(x0 - 1, y0 - 1), (x1, y1)], FRAME))?;
                let style = if cell.wrong { &wrong_style } else { &caption_style };
                let caption_y = layout.coord(y + layout.box_h + CAPTION_HEIGHT / 2 + 2);
                root.draw_text(&cell.caption, style, ((x0 + x1) / 2, caption_y))?;
            }
        }
        root.present()
    })?;
    for (r, row) in rows.iter().enumerate() {
        for (c, cell) in row.iter().enumerate() {
            layout.blit(&mut rgb, &cell.image, layout.image_origin(r, c));
        }
    }
    let bytes = encode_png(&rgb, size, png)?;
    write_file(png, &bytes)
}

/// Where everything goes, in pixels.
struct Layout {
    size: (u32, u32),
    scale: usize,
    /// The image box, as large as the largest image scaled.
    box_w: u64,
    box_h: u64,
    /// A column's width and a row's height.
    col_w: u64,
    row_h: u64,
}

impl Layout {
    /// Checks the grid's shape and plans it.
    fn new(headers: &[String], rows: &[Vec<Cell>], path: &Path) -> Result<Self, PlotError> {
        if headers.is_empty() || rows.is_empty() {
            return Err(PlotError::EmptyGrid {
                path: path.to_path_buf(),
                rows: rows.len(),
                columns: headers.len(),
            });
        }
        let (mut max_h, mut max_w) = (0, 0);
        for (r, row) in rows.iter().enumerate() {
            if row.len() != headers.len() {
                return Err(PlotError::RowLength {
                    path: path.to_path_buf(),
                    row: r,
                    cells: row.len(),
                    headers: headers.len(),
                });
            }
            for (c, cell) in row.iter().enumerate() {
                let (channels, height, width) = cell.image.dim();
                if channels != 1 && channels != 3 {
                    return Err(PlotError::Channels {
                        path: path.to_path_buf(),
                        row: r,
                        column: c,
                        channels,
                    });
                }
                if height == 0 || width == 0 {
                    return Err(PlotError::EmptyImage {
                        path: path.to_path_buf(),
                        row: r,
                        column: c,
                        height,
                        width,
                    });
                }
                max_h = max_h.max(height);
                max_w = max_w.max(width);
            }
        }
        let scale = TARGET_SIDE.div_ceil(max_h.max(max_w)).clamp(1, MAX_SCALE);
        let box_w = (max_w as u64).saturating_mul(scale as u64);
        let box_h = (max_h as u64).saturating_mul(scale as u64);
        let widest_text = headers
            .iter()
            .map(|h| text_width(h, HEADER_SIZE))
            .chain(rows.iter().flatten().map(|c| text_width(&c.caption, CAPTION_SIZE)))
            .max()
            .unwrap_or(0);
        let col_w = box_w.max(u64::from(widest_text)) + 2 * PAD;
        let row_h = box_h + CAPTION_HEIGHT + PAD;
        let width = col_w.saturating_mul(headers.len() as u64);
        let height = (rows.len() as u64)
            .saturating_mul(row_h)
            .saturating_add(2 * PAD + HEADER_HEIGHT);
        let too_large = || PlotError::TooLarge {
            path: path.to_path_buf(),
            width,
            height,
            limit: MAX_PIXELS,
        };
        if width.saturating_mul(height) > MAX_PIXELS {
            return Err(too_large());
        }
        let size = (
            u32::try_from(width).map_err(|_| too_large())?,
            u32::try_from(height).map_err(|_| too_large())?,
        );
        Ok(Self {
            size,
            scale,
            box_w,
            box_h,
            col_w,
            row_h,
        })
    }

    /// The top-left pixel of the image box of row `r`, column `c`.
    fn image_origin(&self, r: usize, c: usize) -> (u64, u64) {
        let x = c as u64 * self.col_w + (self.col_w - self.box_w) / 2;
        let y = PAD + HEADER_HEIGHT + r as u64 * self.row_h;
        (x, y)
    }

    /// A pixel position as plotters wants it; positions fit, as the whole grid was
    /// checked to fit in `u32` pixels.
    fn coord(&self, v: u64) -> i32 {
        i32::try_from(v).unwrap_or(i32::MAX)
    }

    /// Copies `image` into the box at `origin` of the RGB bitmap, each pixel a
    /// `scale`×`scale` block, centred in the box.
    fn blit(&self, rgb: &mut [u8], image: &Array3<f32>, (x, y): (u64, u64)) {
        let (channels, height, width) = image.dim();
        let s = self.scale;
        let x0 = x as usize + (self.box_w as usize - width * s) / 2;
        let y0 = y as usize + (self.box_h as usize - height * s) / 2;
        let stride = self.size.0 as usize * 3;
        let byte = |v: f32| {
            if v.is_nan() {
                0
            } else {
                (v.clamp(0.0, 1.0) * 255.0).round() as u8
            }
        };
        for i in 0..height {
            for j in 0..width {
                let pixel = [0, 1, 2].map(|k| byte(image[[if channels == 3 { k } else { 0 }, i, j]]));
                for dy in 0..s {
                    let row = (y0 + i * s + dy) * stride;
                    for dx in 0..s {
                        let at = row + (x0 + j * s + dx) * 3;
                        if let Some(dst) = rgb.get_mut(at..at + 3) {
                            dst.copy_from_slice(&pixel);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cell(c: usize, h: usize, w: usize) -> Cell {
        Cell {
            image: Array3::zeros((c, h, w)),
            caption: "1 → 1".into(),
            wrong: false,
        }
    }

    #[test]
    fn mnist_digits_are_scaled_by_four_and_laid_out_in_columns() {
        let headers = vec!["clean".to_string(), "ε = 0.1".to_string()];
        let rows = vec![vec![cell(1, 28, 28), cell(1, 28, 28)]; 3];
        let layout = Layout::new(&headers, &rows, Path::new("g.png")).unwrap();
        assert_eq!(layout.scale, 4);
        assert_eq!((layout.box_w, layout.box_h), (112, 112));
        assert_eq!(layout.size.0 as u64, 2 * layout.col_w);
        let (x0, y0) = layout.image_origin(0, 0);
        let (x1, y1) = layout.image_origin(1, 1);
        assert_eq!(x1 - x0, layout.col_w);
        assert_eq!(y1 - y0, layout.row_h);
        assert!(u64::from(layout.size.1) >= y1 + layout.row_h);
    }

    #[test]
    fn a_blitted_pixel_becomes_a_block_in_its_colour() {
        let headers = vec!["a".to_string()];
        let mut image = Array3::zeros((3, 2, 2));
        image[[0, 0, 1]] = 1.0; // top-right pixel red
        image[[2, 1, 0]] = 2.0; // bottom-left blue, clamped
        image[[1, 1, 1]] = f32::NAN; // bottom-right black
        let rows = vec![vec![Cell {
            image: image.clone(),
            caption: String::new(),
            wrong: false,
        }]];
        let layout = Layout::new(&headers, &rows, Path::new("g.png")).unwrap();
        let s = layout.scale as u64;
        assert_eq!(s, 16, "tiny images get the largest factor");
        let (w, h) = layout.size;
        let mut rgb = vec![9u8; w as usize * h as usize * 3];
        let origin = layout.image_origin(0, 0);
        layout.blit(&mut rgb, &image, origin);
        let at = |x: u64, y: u64| {
            let i = ((origin.1 + y) * u64::from(w) + origin.0 + x) as usize * 3;
            [rgb[i], rgb[i + 1], rgb[i + 2]]
        };
        let left_pad = (layout.box_w - 2 * s) / 2;
        assert_eq!(at(left_pad + s, 0), [255, 0, 0]);
        assert_eq!(at(left_pad + 2 * s - 1, s - 1), [255, 0, 0], "the whole block");
        assert_eq!(at(left_pad, s), [0, 0, 255]);
        assert_eq!(at(left_pad + s, s), [0, 0, 0]);
    }

    #[test]
    fn malformed_grids_are_refused_naming_the_place() {
        let path = Path::new("out/grid.png");
        let headers = vec!["a".to_string(), "b".to_string()];
        let err = Layout::new(&headers, &[], path).err().unwrap();
        assert!(matches!(err, PlotError::EmptyGrid { .. }), "{err}");

        let rows = vec![vec![cell(1, 4, 4), cell(1, 4, 4)], vec![cell(1, 4, 4)]];
        let err = Layout::new(&headers, &rows, path).err().unwrap();
        assert!(
            matches!(
                err,
                PlotError::RowLength {
                    row: 1,
                    cells: 1,
                    headers: 2,
                    ..
                }
            ),
            "{err}"
        );

        let rows = vec![vec![cell(1, 4, 4), cell(4, 4, 4)]];
        let err = Layout::new(&headers, &rows, path).err().unwrap();
        assert!(matches!(
            err,
            PlotError::Channels {
                row: 0,
                column: 1,
                channels: 4,
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            "out/grid.png: row 0, column 1 of the example grid: the image has 4 channels; \
             1 (grey) or 3 (RGB) expected, as [C, H, W]"
        );

        let rows = vec![vec![cell(3, 0, 4), cell(1, 4, 4)]];
        let err = Layout::new(&headers, &rows, path).err().unwrap();
        assert!(matches!(err, PlotError::EmptyImage { column: 0, .. }), "{err}");

        let rows = vec![vec![cell(1, 1, 20_000), cell(1, 1, 20_000)]; 40];
        let err = Layout::new(&headers, &rows, path).err().unwrap();
        assert!(matches!(err, PlotError::TooLarge { .. }), "{err}");
    }
}

//! Draws one chart and one example grid with `nnmend::report::plot`, to look at the
//! figures' layout while working on them:
//!
//! ```sh
//! cargo run --example plot_demo -- OUT_DIR [MNIST_IDX_DIR]
//! ```
//!
//! The chart's accuracies are made up (the title says so) on the seed paper's MNIST
//! ε grid. The grid shows the first MNIST test digits (or, without an MNIST folder,
//! colour gradients) clean and with random ±ε noise, with invented predictions, some
//! marked wrong. Nothing here is a result.

use std::path::PathBuf;

use anyhow::{Context, Result};
use ndarray::{Array3, Axis};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use nnmend::data::{load, LoadOptions, Split};
use nnmend::report::plot::{write_chart, write_grid, Cell, Chart, Series};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = PathBuf::from(args.first().context("usage: plot_demo OUT_DIR [MNIST_IDX_DIR]")?);
    std::fs::create_dir_all(&out).with_context(|| out.display().to_string())?;

    let eps = [0.005, 0.01, 0.05, 0.1, 0.15, 0.2];
    let curve =
        |start: f64, fall: f64| -> Vec<(f64, f64)> { eps.iter().map(|&e| (e, start * (-fall * e).exp())).collect() };
    let chart = Chart {
        title: "Accuracy on adversarial MNIST test sets (made-up demo values)".into(),
        x_label: "ε (L∞, pixel space [0, 1])".into(),
        y_label: "Accuracy".into(),
        x_ticks: eps.to_vec(),
        series: vec![
            Series {
                label: "NN on NADV".into(),
                points: curve(0.99, 25.0),
            },
            Series {
                label: "LH on HADV".into(),
                points: curve(0.985, 18.0),
            },
            Series {
                label: "KH on HADV".into(),
                points: curve(0.99, 12.0),
            },
            Series {
                label: "RLH on RHADV".into(),
                points: curve(0.98, 3.0),
            },
            Series {
                label: "RLH on Data".into(),
                points: curve(0.975, 0.4),
            },
        ],
        y_range: (0.0, 1.0),
    };
    write_chart(&chart, &out.join("accuracy.svg"), &out.join("accuracy.png"))?;

    let clean = match args.get(1) {
        Some(dir) => {
            let opts = LoadOptions {
                split: Split::Test,
                limit: Some(4),
            };
            let data = load(dir.as_ref(), &opts)?;
            let pixels = data.pixels.to_f32(0..data.len());
            let labels = data.labels.clone();
            pixels
                .axis_iter(Axis(0))
                .map(|a| a.to_owned())
                .zip(labels)
                .collect::<Vec<_>>()
        }
        None => (0..4)
            .map(|k| {
                let image = Array3::from_shape_fn((3, 32, 32), |(c, i, j)| {
                    let v = [i as f32 / 31.0, j as f32 / 31.0, k as f32 / 3.0];
                    v[c]
                });
                (image, k as i64)
            })
            .collect(),
    };

    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let radii = [0.05f32, 0.1, 0.2];
    let mut headers = vec!["clean".to_string()];
    headers.extend(radii.iter().map(|e| format!("ε = {e}")));
    let rows: Vec<Vec<Cell>> = clean
        .iter()
        .map(|(image, label)| {
            let mut row = vec![Cell {
                image: image.clone(),
                caption: format!("{label} → {label}"),
                wrong: false,
            }];
            for &e in &radii {
                let noisy = image.mapv(|v| v + if rng.random() { e } else { -e });
                let wrong = rng.random_bool(f64::from(e) * 3.0);
                let predicted = if wrong { (label + 3) % 10 } else { *label };
                row.push(Cell {
                    image: noisy,
                    caption: format!("{label} → {predicted}"),
                    wrong,
                });
            }
            row
        })
        .collect();
    write_grid(&headers, &rows, &out.join("grid.png"))?;
    eprintln!("wrote accuracy.svg, accuracy.png and grid.png in {}", out.display());
    Ok(())
}

//! The experiment's figures: accuracy against ε, one chart per test set with a line per
//! model, and the grid of test images with NN's adversarial examples.

use std::path::Path;

use crate::experiment::{Outcome, TestSet};

use super::plot::{self, Cell, Chart, PlotError, Series};

/// ε as the decimal the user typed (0.05, not 0.0500000007…, f32's nearest value).
fn decimal(e: f32) -> f64 {
    e.to_string().parse().unwrap_or(f64::from(e))
}

/// Draws the accuracy charts and the example grid into `dir`; returns their
/// (caption, file) pairs for `report.md`.
pub fn write(outcome: &Outcome, dir: &Path) -> Result<Vec<(String, String)>, PlotError> {
    let report = &outcome.report;
    let eps = report.eps();
    let mut figures = Vec::new();
    for set in TestSet::ALL {
        let series = report
            .models()
            .into_iter()
            .map(|m| Series {
                label: m.to_string(),
                points: eps
                    .iter()
                    .map(|&e| (decimal(e), report.accuracy(m, set, e).unwrap_or(f64::NAN)))
                    .collect(),
            })
            .collect();
        let chart = Chart {
            title: format!("Accuracy on {set} ({})", set.describe()),
            x_label: "ε (L∞ radius, pixels in [0, 1])".into(),
            y_label: "Accuracy".into(),
            x_ticks: eps.iter().map(|&e| decimal(e)).collect(),
            series,
            y_range: (0.0, 1.0),
        };
        let name = format!("accuracy_{set}");
        plot::write_chart(
            &chart,
            &dir.join(format!("{name}.svg")),
            &dir.join(format!("{name}.png")),
        )?;
        figures.push((chart.title, format!("{name}.png")));
    }
    if !outcome.examples.is_empty() {
        let mut headers = vec!["clean".to_string()];
        headers.extend(eps.iter().map(|e| format!("ε = {e}")));
        let rows: Vec<Vec<Cell>> = outcome
            .examples
            .iter()
            .map(|ex| {
                ex.images
                    .iter()
                    .zip(&ex.predicted)
                    .map(|(image, &p)| Cell {
                        image: image.clone(),
                        caption: format!("{} → {p}", ex.label),
                        wrong: p as i64 != ex.label,
                    })
                    .collect()
            })
            .collect();
        plot::write_grid(&headers, &rows, &dir.join("examples.png"))?;
        figures.push((
            "Test images and NN's adversarial examples at each ε (caption: label → NN's prediction; red: wrong)"
                .to_string(),
            "examples.png".to_string(),
        ));
    }
    Ok(figures)
}

//! Fits nnmend's linear SVM on features written by `nnmend features`, timing the fit
//! alone, for `tools/bench/bench_hybrid.py`:
//!
//! ```sh
//! cargo run --release --example fit_features -- TRAIN.npz TEST.npz C TOL MAX_ITER
//! ```
//!
//! Prints one JSON document: seconds, objective, convergence and accuracies.

use std::fs::File;
use std::time::Instant;

use anyhow::{Context, Result};
use ndarray::{Array1, Array2};
use ndarray_npy::NpzReader;

use nnmend::svm::{fit, SvmParams};

fn read(path: &str) -> Result<(Array2<f32>, Vec<usize>)> {
    let mut npz = NpzReader::new(File::open(path).with_context(|| path.to_string())?)?;
    let x: Array2<f32> = npz.by_name("features")?;
    let y: Array1<i64> = npz.by_name("labels")?;
    Ok((x, y.iter().map(|&l| l as usize).collect()))
}

fn accuracy(predicted: &[usize], labels: &[usize]) -> f64 {
    predicted.iter().zip(labels).filter(|(p, l)| p == l).count() as f64 / labels.len() as f64
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [train, test, c, tol, max_iter] = args.as_slice() else {
        anyhow::bail!("usage: fit_features TRAIN.npz TEST.npz C TOL MAX_ITER");
    };
    let (xtr, ytr) = read(train)?;
    let (xte, yte) = read(test)?;
    let params = SvmParams {
        c: c.parse()?,
        tol: tol.parse()?,
        max_iter: max_iter.parse()?,
        ..Default::default()
    };
    let started = Instant::now();
    let classes = ytr.iter().max().map_or(0, |m| m + 1);
    let (model, report) = fit(xtr.view(), &ytr, classes, &params)?;
    let seconds = started.elapsed().as_secs_f64();
    let doc = serde_json::json!({
        "seconds": seconds,
        "objective": report.objective(),
        "converged": report.converged(),
        "max_gap": report.max_gap(),
        "train_accuracy": accuracy(&model.predict(xtr.view()), &ytr),
        "test_accuracy": accuracy(&model.predict(xte.view()), &yte),
    });
    println!("{doc}");
    Ok(())
}

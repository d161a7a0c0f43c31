//! Fits nnmend's linear SVM on features written by `nnmend features`, timing the fit
//! alone, for `tools/bench/bench_hybrid.py` and `tools/bench/svm_vs_sklearn.py`:
//!
//! ```sh
//! cargo run --release --example fit_features -- TRAIN.npz TEST.npz C TOL MAX_ITER [SOLVER [THREADS]]
//! ```
//!
//! SOLVER is `auto` (the default), `primal` or `dual`; THREADS bounds the workers
//! (default: one per core). Prints one JSON document: seconds, the solver that ran,
//! objective, convergence measures and accuracies.

use std::fs::File;
use std::time::Instant;

use anyhow::{Context, Result};
use ndarray::{Array1, Array2};
use ndarray_npy::NpzReader;

use nnmend::svm::{fit, SolverChoice, SvmParams};

fn read(path: &str) -> Result<(Array2<f32>, Vec<usize>)> {
    let mut npz = NpzReader::new(File::open(path).with_context(|| path.to_string())?)?;
    let x: Array2<f32> = npz.by_name("features")?;
    let y: Array1<i64> = npz.by_name("labels")?;
    let y = y
        .iter()
        .map(|&l| usize::try_from(l).with_context(|| format!("{path}: label {l}")))
        .collect::<Result<_>>()?;
    Ok((x, y))
}

fn accuracy(predicted: &[usize], labels: &[usize]) -> f64 {
    predicted.iter().zip(labels).filter(|(p, l)| p == l).count() as f64 / labels.len() as f64
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: fit_features TRAIN.npz TEST.npz C TOL MAX_ITER [auto|primal|dual [THREADS]]";
    let (train, test, c, tol, max_iter) = match args.as_slice() {
        [train, test, c, tol, max_iter, ..] if args.len() <= 7 => (train, test, c, tol, max_iter),
        _ => anyhow::bail!(usage),
    };
    let solver = match args.get(5).map(String::as_str) {
        None | Some("auto") => SolverChoice::Auto,
        Some("primal") => SolverChoice::Primal,
        Some("dual") => SolverChoice::Dual,
        Some(other) => anyhow::bail!("solver '{other}': {usage}"),
    };
    let threads = args.get(6).map(|t| t.parse::<usize>()).transpose()?;
    let (xtr, ytr) = read(train)?;
    let (xte, yte) = read(test)?;
    let params = SvmParams {
        c: c.parse()?,
        tol: tol.parse()?,
        max_iter: max_iter.parse()?,
        solver,
        threads,
        ..Default::default()
    };
    let started = Instant::now();
    let classes = ytr.iter().max().map_or(0, |m| m + 1);
    let (model, report) = fit(xtr.view(), &ytr, classes, &params)?;
    let seconds = started.elapsed().as_secs_f64();
    let doc = serde_json::json!({
        "seconds": seconds,
        "solver": report.solver().map_or("mixed", |s| s.name()),
        "objective": report.objective(),
        "per_class_objective": report.classes.iter().map(|c| c.primal).collect::<Vec<_>>(),
        "converged": report.converged(),
        "max_gap": report.max_gap(),
        "max_relative_gradient": report.max_relative_gradient(),
        "iterations": report.classes.iter().map(|c| c.iterations).collect::<Vec<_>>(),
        "cg_iterations": report.classes.iter().map(|c| c.cg_iterations).collect::<Vec<_>>(),
        "train_accuracy": accuracy(&model.predict(xtr.view()), &ytr),
        "test_accuracy": accuracy(&model.predict(xte.view()), &yte),
    });
    println!("{doc}");
    Ok(())
}

//! `nnmend lp DUMP.json`: solve a repair LP written by `nnmend repair --dump-lp`, on its
//! own. It is how the solver is benchmarked against other LP solvers on identical
//! instances (`tools/bench/bench_repair.py`), and how a user re-solves an instance offline.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use ndarray::Array2;
use serde_json::json;

use nnmend::repair::margin::{self, MarginProblem, MarginSettings};
use nnmend::repair::{solve_classes, ClassSettings, Status};

use super::print_json;

/// Arguments of `nnmend lp`.
#[derive(Debug, Args)]
pub struct LpArgs {
    /// The instance: `x` (S rows of d features), `classes` (one `{"r": [S residuals]}`
    /// per class) and `repair_bias`, as `repair --dump-lp` writes it.
    dump: PathBuf,
    /// Threads solving classes side by side [default: one per CPU core].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    threads: Option<u64>,
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
}

impl LpArgs {
    /// `--threads`, or one per core (as the other commands count their workers).
    fn workers(&self) -> usize {
        self.threads
            .map_or_else(|| nnmend::features::Feed::default().threads, |t| t as usize)
    }
}

#[derive(serde::Deserialize)]
struct Dump {
    #[serde(default)]
    mode: Option<String>,
    x: Vec<Vec<f64>>,
    #[serde(default)]
    classes: Vec<DumpClass>,
    #[serde(default)]
    scores: Vec<Vec<f64>>,
    #[serde(default)]
    labels: Vec<usize>,
    #[serde(default)]
    margin: Vec<f64>,
    #[serde(default)]
    price: Vec<f64>,
    #[serde(default)]
    repair_bias: bool,
}

#[derive(serde::Deserialize)]
struct DumpClass {
    r: Vec<f64>,
}

/// A margin-mode dump, checked.
struct MarginDump {
    x: Array2<f64>,
    scores: Array2<f64>,
    labels: Vec<usize>,
    margin: Vec<f64>,
    price: Vec<f64>,
}

fn open(path: &Path) -> Result<Dump> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    serde_json::from_reader(std::io::BufReader::new(file))
        .with_context(|| format!("{}: not a repair LP dump (`nnmend repair --dump-lp`)", path.display()))
}

fn read_margin(path: &Path, dump: Dump) -> Result<MarginDump> {
    let n = dump.x.len();
    let d = dump.x.first().map_or(0, Vec::len);
    let k = dump.scores.first().map_or(0, Vec::len);
    if n == 0 || d == 0 || k < 2 {
        bail!(
            "{}: 'x' and 'scores' must be non-empty, with at least 2 classes",
            path.display()
        );
    }
    for (name, len) in [
        ("scores", dump.scores.len()),
        ("labels", dump.labels.len()),
        ("margin", dump.margin.len()),
        ("price", dump.price.len()),
    ] {
        if len != n {
            bail!("{}: '{name}' has {len} entries for {n} samples", path.display());
        }
    }
    if let Some(i) = dump.x.iter().position(|row| row.len() != d) {
        bail!(
            "{}: row {i} of 'x' has {} features, row 0 has {d}",
            path.display(),
            dump.x[i].len()
        );
    }
    if let Some(i) = dump.scores.iter().position(|row| row.len() != k) {
        bail!(
            "{}: row {i} of 'scores' has {} classes, row 0 has {k}",
            path.display(),
            dump.scores[i].len()
        );
    }
    if let Some(i) = dump.labels.iter().position(|&l| l >= k) {
        bail!(
            "{}: label {} of sample {i} is out of range for {k} classes",
            path.display(),
            dump.labels[i]
        );
    }
    let x = Array2::from_shape_vec((n, d), dump.x.into_iter().flatten().collect())?;
    let scores = Array2::from_shape_vec((n, k), dump.scores.into_iter().flatten().collect())?;
    let finite = x.iter().chain(&scores).chain(&dump.margin).all(|v| v.is_finite());
    if !finite || dump.price.iter().any(|v| !(v.is_finite() && *v >= 0.0)) {
        bail!("{}: a value is not finite (or a price is negative)", path.display());
    }
    Ok(MarginDump {
        x,
        scores,
        labels: dump.labels,
        margin: dump.margin,
        price: dump.price,
    })
}

/// Reads and checks a paper-mode dump: (x `[S, d]`, residuals `[S, k]`, repair_bias).
fn read(path: &Path, dump: Dump) -> Result<(Array2<f64>, Array2<f64>, bool)> {
    let s = dump.x.len();
    let d = dump.x.first().map_or(0, Vec::len);
    if s == 0 || d == 0 {
        bail!("{}: 'x' is empty", path.display());
    }
    if let Some(i) = dump.x.iter().position(|row| row.len() != d) {
        bail!(
            "{}: row {i} of 'x' has {} features, row 0 has {d}",
            path.display(),
            dump.x[i].len()
        );
    }
    if dump.classes.is_empty() {
        bail!(
            "{}: 'classes' is empty (a paper-mode dump has one residual list per class)",
            path.display()
        );
    }
    if let Some(c) = dump.classes.iter().position(|c| c.r.len() != s) {
        bail!(
            "{}: class {c}'s 'r' has {} residuals for {s} samples",
            path.display(),
            dump.classes[c].r.len()
        );
    }
    let x = Array2::from_shape_vec((s, d), dump.x.into_iter().flatten().collect())?;
    let k = dump.classes.len();
    let r = Array2::from_shape_fn((s, k), |(i, c)| dump.classes[c].r[i]);
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        bail!("{}: x[{}][{}] is not finite", path.display(), i / d, i % d);
    }
    if let Some(i) = r.iter().position(|v| !v.is_finite()) {
        bail!("{}: class {}'s r[{}] is not finite", path.display(), i % k, i / k);
    }
    Ok((x, r, dump.repair_bias))
}

/// Runs `nnmend lp`.
pub fn lp(args: LpArgs) -> Result<ExitCode> {
    let dump = open(&args.dump)?;
    match dump.mode.as_deref() {
        Some("margin") => return margin(&args, read_margin(&args.dump, dump)?),
        None | Some("paper") => {}
        Some(other) => bail!("{}: unknown mode '{other}' (paper or margin)", args.dump.display()),
    }
    let (x, r, bias) = read(&args.dump, dump)?;
    let threads = args.workers();
    let settings = ClassSettings {
        repair_bias: bias,
        ..Default::default()
    };
    let started = Instant::now();
    let classes = solve_classes(x.view(), r.view(), &settings, threads)?;
    let seconds = started.elapsed().as_secs_f64();
    let objective: f64 = classes.iter().map(|c| c.objective).sum();
    let status = Status::worst(classes.iter().map(|c| c.status));
    let gap = classes.iter().map(|c| c.gap).fold(0.0, f64::max);
    if args.json {
        print_json(&json!({
            "status": status,
            "objective": objective,
            "seconds": seconds,
            "samples": x.nrows(),
            "features": x.ncols(),
            "gap": gap,
            "threads": threads,
            "classes": classes.iter().map(|c| json!({
                "status": c.status, "objective": c.objective, "iterations": c.iterations,
                "rounds": c.rounds, "columns": c.columns, "gap": c.gap, "seconds": c.seconds,
            })).collect::<Vec<_>>(),
        }))?;
    } else {
        println!(
            "{status:?}: objective {objective:.6} (certified gap {gap:.1e}), {} samples x {} features x {} classes, {seconds:.2} s",
            x.nrows(),
            x.ncols(),
            r.ncols()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Solves a margin-mode dump.
fn margin(args: &LpArgs, dump: MarginDump) -> Result<ExitCode> {
    let problem = MarginProblem {
        x: dump.x.view(),
        scores: dump.scores.view(),
        labels: &dump.labels,
        margin: &dump.margin,
        price: &dump.price,
    };
    let threads = args.workers();
    let settings = MarginSettings {
        solver_threads: u32::try_from(threads).unwrap_or(1),
        ..Default::default()
    };
    let sol = margin::solve(&problem, &settings);
    if args.json {
        print_json(&json!({
            "mode": "margin",
            "status": sol.status,
            "objective": sol.objective,
            "seconds": sol.seconds,
            "samples": dump.x.nrows(),
            "features": dump.x.ncols(),
            "gap": sol.gap,
            "rounds": sol.rounds,
            "iterations": sol.iterations,
            "active_constraints": sol.active,
            "threads": threads,
        }))?;
    } else {
        println!(
            "{:?}: objective {:.6} (certified gap {:.1e}), {} samples x {} features, {} rounds, {:.2} s",
            sol.status,
            sol.objective,
            sol.gap,
            dump.x.nrows(),
            dump.x.ncols(),
            sol.rounds,
            sol.seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}

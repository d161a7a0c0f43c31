//! A repair LP's data, as `repair --dump-lp` writes it and `nnmend lp` reads it back:
//! one JSON object, so that the same instance can be re-solved offline or handed to
//! another LP solver (`tools/lp_reference.py` builds it for HiGHS).
//!
//! ```text
//! paper:  {"mode": "paper", "repair_bias": b, "x": [[…S rows of d′…]],
//!          "classes": [{"r": [S residuals]}, … one per class]}
//! margin: {"mode": "margin", "repair_bias": b, "x": [[…N rows of d′…]],
//!          "scores": [[…N rows of K…]], "labels": [N], "margin": [N], "price": [N]}
//! ```
//!
//! `x` holds the changeable features (a last column of ones when the bias changes, in
//! margin mode); a dump without `mode` is a paper-mode dump.

use std::path::Path;
use std::time::Instant;

use ndarray::Array2;
use serde::{Deserialize, Serialize};

use super::margin::{self, MarginProblem, MarginSettings, MarginSolution, MarginSolver};
use super::paper::{solve_classes, ClassSettings, ClassSolution, Status};
use super::RepairError;

/// The LP of one repair.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// Whether the bias may change.
    pub repair_bias: bool,
    /// The changeable features, `[S, d′]` (paper) or `[N, d′]` (margin).
    pub x: Array2<f64>,
    /// The formulation and its other data.
    pub kind: Kind,
}

/// The formulation of an [`Instance`].
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// The paper's: per class, the residuals `[S, k]` of the repair samples.
    Paper {
        /// `[S, k]`.
        residuals: Array2<f64>,
    },
    /// The margin program.
    Margin(MarginData),
}

/// A margin-mode instance's data beside its features: current scores `[N, K]`, labels,
/// wanted margins and slack prices, repair samples first.
#[derive(Debug, Clone, PartialEq)]
pub struct MarginData {
    /// `[N, K]`.
    pub scores: Array2<f64>,
    /// `[N]`.
    pub labels: Vec<usize>,
    /// Wanted margin per sample.
    pub margin: Vec<f64>,
    /// Slack price per sample.
    pub price: Vec<f64>,
}

/// How a solve of an instance ended.
#[derive(Debug, Clone)]
pub enum Solved {
    /// The paper's, per class.
    Paper(Vec<ClassSolution>),
    /// The margin program's.
    Margin(MarginSolution),
}

impl Solved {
    /// The worst status.
    pub fn status(&self) -> Status {
        match self {
            Solved::Paper(classes) => Status::worst(classes.iter().map(|c| c.status)),
            Solved::Margin(m) => m.status,
        }
    }

    /// The optimum.
    pub fn objective(&self) -> f64 {
        match self {
            Solved::Paper(classes) => classes.iter().map(|c| c.objective).sum(),
            Solved::Margin(m) => m.objective,
        }
    }

    /// The certified gap (the largest over classes).
    pub fn gap(&self) -> f64 {
        match self {
            Solved::Paper(classes) => classes.iter().map(|c| c.gap).fold(0.0, f64::max),
            Solved::Margin(m) => m.gap,
        }
    }
}

/// The file's layout (see the module docs).
#[derive(Serialize, Deserialize)]
struct Dump {
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    repair_bias: bool,
    x: Vec<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    classes: Vec<DumpClass>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    scores: Vec<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    labels: Vec<usize>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    margin: Vec<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    price: Vec<f64>,
}

#[derive(Serialize, Deserialize)]
struct DumpClass {
    r: Vec<f64>,
}

fn rows(x: &Array2<f64>) -> Vec<Vec<f64>> {
    x.rows().into_iter().map(|row| row.to_vec()).collect()
}

/// `rows` as an `[n, width]` matrix, or why not (`name` in the message).
fn matrix(rows: Vec<Vec<f64>>, name: &str) -> Result<Array2<f64>, String> {
    let n = rows.len();
    let width = rows.first().map_or(0, Vec::len);
    if n == 0 || width == 0 {
        return Err(format!("'{name}' is empty"));
    }
    if let Some(i) = rows.iter().position(|row| row.len() != width) {
        return Err(format!(
            "row {i} of '{name}' has {} entries, row 0 has {width}",
            rows[i].len()
        ));
    }
    if let Some((i, j)) = rows
        .iter()
        .enumerate()
        .find_map(|(i, row)| row.iter().position(|v| !v.is_finite()).map(|j| (i, j)))
    {
        return Err(format!("{name}[{i}][{j}] is not finite"));
    }
    Array2::from_shape_vec((n, width), rows.into_iter().flatten().collect()).map_err(|e| e.to_string())
}

impl Instance {
    /// A paper-mode instance.
    pub fn paper(x: Array2<f64>, residuals: Array2<f64>, repair_bias: bool) -> Self {
        Self {
            repair_bias,
            x,
            kind: Kind::Paper { residuals },
        }
    }

    /// A margin-mode instance.
    pub fn margin(
        x: Array2<f64>,
        scores: Array2<f64>,
        labels: Vec<usize>,
        margin: Vec<f64>,
        price: Vec<f64>,
        repair_bias: bool,
    ) -> Self {
        Self {
            repair_bias,
            x,
            kind: Kind::Margin(MarginData {
                scores,
                labels,
                margin,
                price,
            }),
        }
    }

    /// `paper` or `margin`.
    pub fn mode(&self) -> &'static str {
        match self.kind {
            Kind::Paper { .. } => "paper",
            Kind::Margin(_) => "margin",
        }
    }

    /// Classes of the head.
    pub fn classes(&self) -> usize {
        match &self.kind {
            Kind::Paper { residuals } => residuals.ncols(),
            Kind::Margin(m) => m.scores.ncols(),
        }
    }

    fn dump(&self) -> Dump {
        let mut dump = Dump {
            mode: Some(self.mode().into()),
            repair_bias: self.repair_bias,
            x: rows(&self.x),
            classes: Vec::new(),
            scores: Vec::new(),
            labels: Vec::new(),
            margin: Vec::new(),
            price: Vec::new(),
        };
        match &self.kind {
            Kind::Paper { residuals } => {
                dump.classes = residuals
                    .columns()
                    .into_iter()
                    .map(|c| DumpClass { r: c.to_vec() })
                    .collect();
            }
            Kind::Margin(m) => {
                dump.scores = rows(&m.scores);
                dump.labels = m.labels.clone();
                dump.margin = m.margin.clone();
                dump.price = m.price.clone();
            }
        }
        dump
    }

    /// Writes the instance to `path` as JSON, atomically.
    pub fn save(&self, path: &Path) -> crate::Result<()> {
        let dump = self.dump();
        let io = |source| crate::Error::Write {
            path: path.to_path_buf(),
            source,
        };
        crate::atomic::write_with(path, io, |file| {
            serde_json::to_writer(std::io::BufWriter::new(file), &dump).map_err(|e| io(std::io::Error::other(e)))
        })
    }

    /// Reads and checks an instance written by [`Instance::save`].
    pub fn load(path: &Path) -> Result<Self, RepairError> {
        let bad = |reason: String| RepairError::Dump {
            path: path.to_path_buf(),
            reason,
        };
        let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
        let dump: Dump = serde_json::from_reader(std::io::BufReader::new(file))
            .map_err(|e| bad(format!("not a repair LP dump (`nnmend repair --dump-lp`): {e}")))?;
        Self::check(dump).map_err(bad)
    }

    fn check(dump: Dump) -> Result<Self, String> {
        let repair_bias = dump.repair_bias;
        let x = matrix(dump.x, "x")?;
        let n = x.nrows();
        match dump.mode.as_deref() {
            None | Some("paper") => {
                if dump.classes.is_empty() {
                    return Err("'classes' is empty (a paper-mode dump has one residual list per class)".into());
                }
                if let Some(c) = dump.classes.iter().position(|c| c.r.len() != n) {
                    return Err(format!(
                        "class {c}'s 'r' has {} residuals for {n} samples",
                        dump.classes[c].r.len()
                    ));
                }
                let k = dump.classes.len();
                let residuals = Array2::from_shape_fn((n, k), |(i, c)| dump.classes[c].r[i]);
                if let Some(i) = residuals.iter().position(|v| !v.is_finite()) {
                    return Err(format!("class {}'s r[{}] is not finite", i % k, i / k));
                }
                Ok(Self::paper(x, residuals, repair_bias))
            }
            Some("margin") => {
                let scores = matrix(dump.scores, "scores")?;
                let k = scores.ncols();
                if k < 2 {
                    return Err("'scores' needs at least 2 classes".into());
                }
                for (name, len) in [
                    ("scores", scores.nrows()),
                    ("labels", dump.labels.len()),
                    ("margin", dump.margin.len()),
                    ("price", dump.price.len()),
                ] {
                    if len != n {
                        return Err(format!("'{name}' has {len} entries for {n} samples"));
                    }
                }
                if let Some(i) = dump.labels.iter().position(|&l| l >= k) {
                    return Err(format!(
                        "label {} of sample {i} is out of range for {k} classes",
                        dump.labels[i]
                    ));
                }
                if dump.margin.iter().any(|v| !v.is_finite())
                    || dump.price.iter().any(|v| !(v.is_finite() && *v >= 0.0))
                {
                    return Err("a margin is not finite, or a price is negative or not finite".into());
                }
                Ok(Self::margin(
                    x,
                    scores,
                    dump.labels,
                    dump.margin,
                    dump.price,
                    repair_bias,
                ))
            }
            Some(other) => Err(format!("unknown mode '{other}' (paper or margin)")),
        }
    }

    /// Solves the instance with `threads` threads (classes side by side in paper mode,
    /// the solver's linear algebra in margin mode, where `solver` solves it): the
    /// solution and the seconds it took.
    pub fn solve(&self, threads: usize, solver: MarginSolver) -> Result<(Solved, f64), RepairError> {
        let started = Instant::now();
        let solved = match &self.kind {
            Kind::Paper { residuals } => {
                let settings = ClassSettings {
                    repair_bias: self.repair_bias,
                    ..Default::default()
                };
                Solved::Paper(solve_classes(self.x.view(), residuals.view(), &settings, threads)?)
            }
            Kind::Margin(m) => {
                let problem = MarginProblem {
                    x: self.x.view(),
                    scores: m.scores.view(),
                    labels: &m.labels,
                    margin: &m.margin,
                    price: &m.price,
                };
                let settings = MarginSettings {
                    solver_threads: u32::try_from(threads).unwrap_or(1),
                    solver,
                    ..Default::default()
                };
                Solved::Margin(margin::solve(&problem, &settings))
            }
        };
        Ok((solved, started.elapsed().as_secs_f64()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use ndarray::array;

    use super::*;

    #[test]
    fn a_saved_instance_reads_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let paper = Instance::paper(
            array![[1.0, 0.5], [0.0, 2.0]],
            array![[0.1, -0.2, 0.3], [0.0, 1.0, -1.0]],
            true,
        );
        let margin = Instance::margin(
            array![[1.0, 0.5, 1.0], [0.0, 2.0, 1.0]],
            array![[0.1, -0.2], [0.0, 1.0]],
            vec![0, 1],
            vec![1.0, 0.5],
            vec![1.0, 10.0],
            false,
        );
        for instance in [paper, margin] {
            let path = dir.path().join(format!("{}.json", instance.mode()));
            instance.save(&path).unwrap();
            assert_eq!(Instance::load(&path).unwrap(), instance);
        }
    }

    #[test]
    fn an_inconsistent_dump_is_refused_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.json");
        let cases = [
            (
                r#"{"x": [[1.0], [2.0, 3.0]], "classes": [{"r": [0.0, 0.0]}]}"#,
                "row 1 of 'x'",
            ),
            (
                r#"{"x": [[1.0]], "classes": [{"r": [0.0, 1.0]}]}"#,
                "class 0's 'r' has 2",
            ),
            (
                r#"{"mode": "margin", "x": [[1.0]], "scores": [[0.0, 1.0]], "labels": [2], "margin": [1.0], "price": [1.0]}"#,
                "label 2",
            ),
            (r#"{"mode": "simplex", "x": [[1.0]]}"#, "unknown mode"),
            (r#"{"x": []}"#, "'x' is empty"),
        ];
        for (text, needle) in cases {
            std::fs::write(&path, text).unwrap();
            let e = Instance::load(&path).unwrap_err().to_string();
            assert!(e.contains(needle) && e.contains("bad.json"), "{e}");
        }
    }
}

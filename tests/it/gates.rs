//! The gates of `repair` and `run` (`--min-efficacy`, `--max-drawdown`,
//! `--min-robust-accuracy`) through the binary: a failed gate writes the outputs, then
//! prints one line naming the gate, the value and the bound, and exits 3; gates that
//! pass exit 0; a runtime error (a stalled LP) still exits 1; a gate whose value the
//! command line does not measure is refused before any work (exit code 2). The values
//! are checked against the JSON and, for the drawdown, against `eval` of both models.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common::*;

/// A hybrid of the tiny CNN on 300 MNIST training images and an FGSM file (ε = 0.1)
/// against it on 100 of them, in `dir`.
fn hybrid_and_attack(dir: &Path) -> (PathBuf, PathBuf) {
    let data = fixture("mnist-small");
    let hybrid = dir.join("lh.onnx");
    let adv = dir.join("adv.npz");
    ok({
        let mut c = nnmend();
        c.args(["fit", s(&fixture("tiny_cnn.onnx")), "--train", s(&data)]);
        c.args(["--limit", "300", "-o", s(&hybrid)]);
        c
    });
    ok({
        let mut c = nnmend();
        c.args(["attack", s(&hybrid), "--data", s(&data), "--split", "train"]);
        c.args(["--limit", "100", "--eps", "0.1", "-o", s(&adv)]);
        c
    });
    (hybrid, adv)
}

/// The lines of stderr that report a failed gate.
fn gate_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("gate failed"))
        .map(str::to_string)
        .collect()
}

/// Asserts exit code 3 and exactly one failed-gate line, which it returns.
fn one_failed_gate(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines = gate_lines(out);
    assert_eq!(lines.len(), 1, "one line per failed gate: {stderr}");
    lines[0].clone()
}

fn stdout_json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

struct Repair {
    hybrid: PathBuf,
    adv: PathBuf,
    data: PathBuf,
    dir: PathBuf,
}

impl Repair {
    /// `repair` of the hybrid into `out` with `extra` options and `--json`.
    fn run(&self, out: &str, extra: &[&str]) -> Output {
        let mut c = nnmend();
        c.args([
            "repair",
            s(&self.hybrid),
            "--adv",
            s(&self.adv),
            "--train",
            s(&self.data),
        ]);
        c.args(["-o", s(&self.dir.join(out)), "--json"]);
        c.args(extra);
        c.output().unwrap()
    }
}

#[test]
fn repair_gates_fail_after_writing_the_model_and_pass_when_met() {
    let tmp = tempdir();
    let (hybrid, adv) = hybrid_and_attack(tmp.path());
    let r = Repair {
        hybrid,
        adv,
        data: fixture("mnist-small"),
        dir: tmp.path().to_path_buf(),
    };
    let test = ["--test", s(&r.data), "--limit", "300"];

    // Efficacy: with no price on a repair sample's shortfall, the cheapest repair
    // changes nothing, and no repair sample is fixed (with no head training first).
    let out = r.run(
        "eff.onnx",
        &["--epochs", "0", "--slack-price", "0", "--min-efficacy", "0.5"],
    );
    let line = one_failed_gate(&out);
    let v = stdout_json(&out);
    assert_eq!(v["efficacy"], 0.0, "{v}");
    assert_eq!(line, "gate failed: efficacy 0 below 0.5 (--min-efficacy)");
    assert_eq!(v["gates"][0]["passed"], false);
    nnmend::onnx::load(&tmp.path().join("eff.onnx")).unwrap();

    // Drawdown: the paper's LP costs clean accuracy here; the value is the difference
    // of `eval`'s accuracies of the two models.
    let mut args = vec!["--mode", "paper", "--pgd-limit", "0", "--max-drawdown", "0"];
    args.extend(test);
    let out = r.run("dd.onnx", &args);
    let line = one_failed_gate(&out);
    let v = stdout_json(&out);
    let drawdown = v["drawdown"].as_f64().unwrap();
    assert!(drawdown > 0.0, "{v}");
    let eval = json(&run(&[
        "eval",
        s(&r.hybrid),
        s(&tmp.path().join("dd.onnx")),
        "--data",
        s(&r.data),
        "--limit",
        "300",
        "--json",
    ]));
    let acc = |i: usize| eval["models"][i]["accuracy"].as_f64().unwrap();
    assert!(
        (drawdown - (acc(0) - acc(1))).abs() < 1e-12,
        "{drawdown} vs eval {eval}"
    );
    assert_eq!(
        line,
        format!("gate failed: drawdown {} above 0 (--max-drawdown)", six(drawdown)),
    );
    assert_eq!(v["gates"][0]["value"].as_f64().unwrap(), drawdown);

    // Robust accuracy: the repaired model's own, at the file's ε.
    let mut args = vec!["--mode", "paper", "--pgd-limit", "20", "--min-robust-accuracy", "0.9"];
    args.extend(test);
    let out = r.run("ra.onnx", &args);
    let line = one_failed_gate(&out);
    let v = stdout_json(&out);
    let robust = v["robustness"]["after"]["robust_accuracy"].as_f64().unwrap();
    assert!(robust < 0.9, "{v}");
    assert_eq!(v["robustness"]["after"]["n"], 20);
    assert_eq!(
        line,
        format!(
            "gate failed: robust accuracy {} below 0.9 (--min-robust-accuracy) at ε = 0.1",
            six(robust)
        ),
    );
    assert!(tmp.path().join("ra.onnx").is_file());

    // The same three gates, met: exit 0, nothing said.
    let mut args = vec!["--mode", "paper", "--pgd-limit", "20"];
    args.extend(test);
    let bounds = [
        "--min-efficacy".to_string(),
        format!("{}", v["efficacy"]),
        "--max-drawdown".into(),
        format!("{drawdown}"),
        "--min-robust-accuracy".into(),
        format!("{robust}"),
    ];
    args.extend(bounds.iter().map(String::as_str));
    let out = r.run("pass.onnx", &args);
    let v = json(&out);
    assert!(gate_lines(&out).is_empty());
    let gates = v["gates"].as_array().unwrap();
    assert_eq!(gates.len(), 3, "{v}");
    assert!(gates.iter().all(|g| g["passed"] == true), "{v}");
}

#[test]
fn a_stalled_repair_with_a_gate_is_a_runtime_error() {
    let tmp = tempdir();
    let (hybrid, adv) = hybrid_and_attack(tmp.path());
    let r = Repair {
        hybrid,
        adv,
        data: fixture("mnist-small"),
        dir: tmp.path().to_path_buf(),
    };
    let out = r.run("rlh.onnx", &["--lp-max-iter", "1", "--min-efficacy", "0.99"]);
    fails_with(&out, 1, "the repair LP ended Stalled");
    assert!(gate_lines(&out).is_empty(), "no gate is looked at");
    assert!(!tmp.path().join("rlh.onnx").exists());
}

#[test]
fn a_gate_that_cannot_be_measured_is_refused_up_front() {
    let tmp = tempdir();
    // Nothing is read before the refusal: the inputs need not exist.
    let base = ["repair", "lh.onnx", "--adv", "adv.npz", "--train", "data", "-o"];
    let out_file = tmp.path().join("rlh.onnx");
    let repair = |extra: &[&str]| {
        let mut c = nnmend();
        c.args(base).arg(&out_file).args(extra);
        c.output().unwrap()
    };
    fails_with(
        &repair(&["--max-drawdown", "0.01"]),
        2,
        "--max-drawdown needs --test DATA",
    );
    fails_with(
        &repair(&["--min-robust-accuracy", "0.5"]),
        2,
        "--min-robust-accuracy needs --test DATA",
    );
    fails_with(
        &repair(&["--min-robust-accuracy", "0.5", "--test", "data", "--pgd-limit", "0"]),
        2,
        "--min-robust-accuracy needs --pgd-limit N above 0",
    );
    fails_with(&repair(&["--min-efficacy", "90"]), 2, "0.003 is 0.3 points");
    assert!(!out_file.exists());

    let dir = tmp.path().join("run");
    let data = fixture("mnist-small");
    let out = run(&[
        "run",
        s(&fixture("tiny_cnn.onnx")),
        "--train",
        s(&data),
        "--test",
        s(&data),
        "--eps",
        "0.1",
        "--pgd-limit",
        "0",
        "--min-robust-accuracy",
        "0.5",
        "--out",
        s(&dir),
    ]);
    fails_with(&out, 2, "--min-robust-accuracy needs --pgd-limit N above 0");
    assert!(!dir.exists());
}

/// `run` on the tiny CNN, 300 training and 100 test images, at two radii, with `extra`
/// options.
fn experiment(dir: &Path, extra: &[&str]) -> Output {
    let data = fixture("mnist-small");
    let mut c = nnmend();
    c.args([
        "run",
        s(&fixture("tiny_cnn.onnx")),
        "--train",
        s(&data),
        "--test",
        s(&data),
    ]);
    c.args(["--train-limit", "300", "--test-limit", "100", "--eps", "0.1,0.2"]);
    c.args(["--no-kernel", "--repair-samples", "3", "--quiet"]);
    c.args(["--out", s(dir)]);
    c.args(extra);
    c.output().unwrap()
}

/// Whether `a` and `b` hold the same keys and values, numbers equal to f32 precision
/// (a radius prints as the f32 it is in one, widened to f64 in the other).
fn same_document(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            (x - y).abs() <= 1e-7 * x.abs().max(y.abs())
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_document(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same_document(v, w)))
        }
        _ => a == b,
    }
}

fn report(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap()
}

/// The worst value over the repairs' ε of `key`: the smallest, or the largest.
fn worst(report: &serde_json::Value, key: &str, largest: bool) -> (f64, f64) {
    let mut values: Vec<(f64, f64)> = report["repairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r[key].as_f64().unwrap(), r["eps"].as_f64().unwrap()))
        .collect();
    values.sort_by(|a, b| a.0.total_cmp(&b.0));
    if largest {
        *values.last().unwrap()
    } else {
        values[0]
    }
}

fn eps_text(eps: f64) -> String {
    format!("{}", eps as f32)
}

/// A fraction as the gate's line writes it: at most six decimals, trailing zeros dropped.
fn six(v: f64) -> String {
    format!("{v:.6}")
        .trim_end_matches('0')
        .trim_end_matches('.')
        .to_string()
}

#[test]
fn run_gates_judge_the_worst_epsilon_after_writing_the_report() {
    let tmp = tempdir();

    // Robust accuracy: RLH's own, the lowest over ε; the folder is written whole.
    let dir = tmp.path().join("robust");
    let out = experiment(
        &dir,
        &["--mode", "paper", "--pgd-limit", "10", "--min-robust-accuracy", "0.9"],
    );
    let line = one_failed_gate(&out);
    let r = report(&dir);
    for file in [
        "report.md",
        "models/LH.onnx",
        "models/RLH_eps0.1.onnx",
        "models/RLH_eps0.2.onnx",
    ] {
        assert!(dir.join(file).is_file(), "{file} is missing");
    }
    let (value, eps) = r["robustness"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["model"] == "RLH")
        .map(|f| (f["robust_accuracy"].as_f64().unwrap(), f["eps"].as_f64().unwrap()))
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .unwrap();
    assert!(value < 0.9);
    assert_eq!(
        line,
        format!(
            "gate failed: robust accuracy {} below 0.9 (--min-robust-accuracy) at ε = {}",
            six(value),
            eps_text(eps)
        )
    );
    assert_eq!(r["gates"][0]["gate"], "robust_accuracy");
    assert_eq!(r["gates"][0]["passed"], false);
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(md.contains(&format!("- {line}")), "report.md names the gate");

    // Drawdown: the largest over ε.
    let dir = tmp.path().join("drawdown");
    let extra: Vec<&str> = "--mode paper --pgd-limit 0 --max-drawdown 0.01 --json"
        .split(' ')
        .collect();
    let out = experiment(&dir, &extra);
    let line = one_failed_gate(&out);
    let r = report(&dir);
    // `--json` prints report.json's document with the folder beside it.
    let mut printed = stdout_json(&out);
    assert_eq!(printed["out"], serde_json::json!(dir), "run --json names its folder");
    printed.as_object_mut().unwrap().remove("out");
    assert!(
        same_document(&printed, &r),
        "run --json prints what report.json holds:\n{printed}\n{r}"
    );
    let (value, eps) = worst(&r, "drawdown", true);
    assert!(value > 0.01, "{}", r["repairs"]);
    assert_eq!(
        line,
        format!(
            "gate failed: drawdown {} above 0.01 (--max-drawdown) at ε = {}",
            six(value),
            eps_text(eps)
        )
    );
    assert!((r["gates"][0]["value"].as_f64().unwrap() - value).abs() < 1e-15);

    // Efficacy: the margin LP with no price on a repair sample's shortfall, and no
    // head training before it, fixes none.
    let dir = tmp.path().join("efficacy");
    let out = experiment(
        &dir,
        &[
            "--pgd-limit",
            "0",
            "--mode",
            "margin",
            "--epochs",
            "0",
            "--slack-price",
            "0",
            "--min-efficacy",
            "0.5",
        ],
    );
    let line = one_failed_gate(&out);
    let r = report(&dir);
    let (value, eps) = worst(&r, "efficacy", false);
    assert_eq!(value, 0.0, "{}", r["repairs"]);
    assert_eq!(
        line,
        format!(
            "gate failed: efficacy 0 below 0.5 (--min-efficacy) at ε = {}",
            eps_text(eps)
        )
    );

    // A stalled LP is no error in `run`: RLH is LH unchanged, and the gate judges it,
    // with LH's efficacy.
    let dir = tmp.path().join("stalled");
    let out = experiment(
        &dir,
        &[
            "--mode",
            "paper",
            "--pgd-limit",
            "0",
            "--lp-max-iter",
            "1",
            "--min-efficacy",
            "0.5",
        ],
    );
    let line = one_failed_gate(&out);
    let r = report(&dir);
    assert!(
        r["repairs"].as_array().unwrap().iter().all(|f| f["used"] == false),
        "{}",
        r["repairs"]
    );
    let (value, eps) = worst(&r, "efficacy_before", false);
    assert_eq!(
        line,
        format!(
            "gate failed: efficacy {} below 0.5 (--min-efficacy) at ε = {}",
            six(value),
            eps_text(eps)
        )
    );

    // Met: exit 0, each gate recorded as passed.
    let dir = tmp.path().join("pass");
    let out = experiment(
        &dir,
        &[
            "--mode",
            "paper",
            "--pgd-limit",
            "10",
            "--min-efficacy",
            "0",
            "--max-drawdown",
            "1",
            "--min-robust-accuracy",
            "0",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(gate_lines(&out).is_empty());
    let gates = report(&dir)["gates"].as_array().unwrap().clone();
    assert_eq!(gates.len(), 3);
    assert!(gates.iter().all(|g| g["passed"] == true), "{gates:?}");
}

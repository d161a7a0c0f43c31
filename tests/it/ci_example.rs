//! The worked CI example, `docs/ci-example.yml`: its `run:` steps, in order, executed as
//! one bash script (`-eo pipefail`, as GitHub Actions runs a bash step) from the project
//! root, with the workflow's `env:` exported and the binary under test first on PATH.
//! The `uses:` steps (checkout, toolchain, cache, artifact upload) are documented, not
//! run. As written the gates pass and every output is in `$OUT`; with a bound the repair
//! cannot meet, the script stops at the repair with exit code 3, the gate's line on
//! stderr, and the repair's outputs written.
//!
//! The workflow is read by a small reader of the YAML it uses (a top-level `env:` of
//! scalars; steps with `name:`, `uses:`, `with:`, `if:` and `run:`, inline or as a `|`
//! block), which refuses anything else rather than guess.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::*;

/// The workflow's top-level `env:` and its steps' `run:` scripts, in order.
struct Workflow {
    env: Vec<(String, String)>,
    runs: Vec<String>,
    uses: Vec<String>,
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// A scalar without its trailing comment and quotes.
fn scalar(raw: &str) -> String {
    let raw = raw.trim();
    if let Some(rest) = raw.strip_prefix('"') {
        let end = rest.find('"').unwrap_or_else(|| panic!("unterminated quote: {raw}"));
        return rest[..end].to_string();
    }
    raw.split(" #").next().unwrap_or("").trim().to_string()
}

fn read(path: &Path) -> Workflow {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(
        !text.contains('\t'),
        "{}: tabs are not YAML indentation",
        path.display()
    );
    let lines: Vec<&str> = text.lines().collect();
    let mut wf = Workflow {
        env: vec![],
        runs: vec![],
        uses: vec![],
    };
    let mut i = 0;
    let mut top = "";
    while i < lines.len() {
        let line = lines[i];
        let content = line.trim();
        i += 1;
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let at = indent(line);
        if at == 0 {
            top = content.trim_end_matches(':');
            continue;
        }
        if top == "env" {
            assert_eq!(at, 2, "env: one level of KEY: value: {line}");
            let (key, value) = content
                .split_once(':')
                .unwrap_or_else(|| panic!("not KEY: value: {line}"));
            wf.env.push((key.trim().to_string(), scalar(value)));
            continue;
        }
        if top != "jobs" {
            continue;
        }
        // A step's key, with or without the `- ` that opens the step.
        let key_at = if content.starts_with("- ") { at + 2 } else { at };
        let entry = content.trim_start_matches("- ");
        if let Some(rest) = entry.strip_prefix("uses:") {
            wf.uses.push(scalar(rest));
        } else if let Some(rest) = entry.strip_prefix("run:") {
            let rest = rest.trim();
            if rest == "|" {
                let mut block = vec![];
                let mut block_indent = None;
                while i < lines.len() && (lines[i].trim().is_empty() || indent(lines[i]) > key_at) {
                    let l = lines[i];
                    i += 1;
                    if l.trim().is_empty() {
                        block.push(String::new());
                        continue;
                    }
                    let n = *block_indent.get_or_insert(indent(l));
                    assert!(indent(l) >= n, "a block line less indented than the first: {l}");
                    block.push(l[n..].to_string());
                }
                wf.runs.push(block.join("\n"));
            } else {
                assert!(
                    !rest.is_empty() && !rest.starts_with(['>', '|', '"', '\'']),
                    "only `run: |` blocks and plain one-line commands are read: {line}"
                );
                wf.runs.push(rest.to_string());
            }
        } else if entry.starts_with("shell:") || entry.starts_with("working-directory:") {
            panic!("the script is run as bash from the project root; `{entry}` would change that");
        }
    }
    for run in &wf.runs {
        assert!(
            !run.contains("${{"),
            "a run: step with a ${{{{ }}}} expression cannot run outside GitHub: {run}"
        );
    }
    wf
}

/// Runs the workflow's steps as one script with `overrides` of its env.
fn execute(wf: &Workflow, overrides: &[(&str, &str)]) -> Output {
    let bin_dir = nnmend_path().parent().unwrap().to_path_buf();
    let path = std::env::join_paths(
        std::iter::once(bin_dir).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .unwrap();
    let mut cmd = Command::new("bash");
    cmd.args(["--noprofile", "--norc", "-eo", "pipefail", "-c", &wf.runs.join("\n")]);
    cmd.current_dir(root()).env("PATH", path);
    for (k, v) in &wf.env {
        cmd.env(k, v);
    }
    for (k, v) in overrides {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn the_ci_example_runs_and_its_gates_fail_the_pipeline() {
    let wf = read(&root().join("docs/ci-example.yml"));
    let names: Vec<&str> = wf.env.iter().map(|(k, _)| k.as_str()).collect();
    for key in ["MODEL", "TRAIN", "TEST", "OUT", "MIN_ROBUST_ACCURACY"] {
        assert!(names.contains(&key), "env has no {key}: {names:?}");
    }
    assert!(
        wf.uses.iter().any(|u| u.starts_with("actions/checkout@")),
        "{:?}",
        wf.uses
    );
    assert!(
        wf.uses.iter().any(|u| u.starts_with("actions/upload-artifact@")),
        "{:?}",
        wf.uses
    );
    assert!(wf.runs.len() >= 6, "{:?}", wf.runs);

    let tmp = tempdir();
    let out_dir = tmp.path().join("report");
    let out = execute(&wf, &[("OUT", s(&out_dir))]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the workflow's steps failed ({}): {stderr}",
        out.status
    );
    assert!(!stderr.contains("gate failed"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("Compiling") && !stderr.contains("Installing"),
        "nnmend was on PATH: the install step must not run"
    );
    for file in [
        "version.json",
        "hybrid.onnx",
        "adv.npz",
        "repaired.onnx",
        "repair.json",
        "eval.json",
        "experiment/report.json",
        "experiment/report.md",
    ] {
        assert!(out_dir.join(file).is_file(), "{file} is missing from $OUT");
    }
    let repair: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("repair.json")).unwrap()).unwrap();
    let gates = repair["gates"].as_array().unwrap();
    assert_eq!(gates.len(), 3, "{repair}");
    assert!(gates.iter().all(|g| g["passed"] == true), "{repair}");
    let version: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("version.json")).unwrap()).unwrap();
    assert_eq!(version["version"], env!("CARGO_PKG_VERSION"));

    // A bound the repair cannot meet stops the pipeline at the repair, after its
    // outputs are written, with the gate's line.
    let failing = tmp.path().join("failing");
    let out = execute(&wf, &[("OUT", s(&failing)), ("MIN_ROBUST_ACCURACY", "1")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    let robust = repair["robustness"]["after"]["robust_accuracy"].as_f64().unwrap();
    assert!(
        stderr.contains(&format!(
            "gate failed: robust accuracy {robust} below 1 (--min-robust-accuracy)"
        )),
        "{stderr}"
    );
    assert!(failing.join("repaired.onnx").is_file());
    assert!(failing.join("repair.json").is_file());
    assert!(
        !failing.join("eval.json").exists(),
        "the steps after a failed gate do not run"
    );
}

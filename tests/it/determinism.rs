//! The same command with the same seed writes byte-identical files: `fit` (ONNX),
//! `attack` (NPZ, FGSM and PGD with a random start) and `repair` (ONNX, both modes),
//! at two worker counts where threads could change the result.

use crate::common::*;

/// Runs the pipeline into `dir` with `threads` workers and returns each output's bytes.
fn pipeline(dir: &std::path::Path, threads: &str) -> Vec<(String, Vec<u8>)> {
    let model = fixture("tiny_cnn.onnx");
    let data = fixture("mnist-small");
    let p = |name: &str| dir.join(name);
    let ok_run = |args: &[&str]| {
        let out = run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok_run(&[
        "fit",
        s(&model),
        "--train",
        s(&data),
        "--limit",
        "500",
        "--seed",
        "7",
        "-o",
        s(&p("lh.onnx")),
        "--threads",
        threads,
    ]);
    ok_run(&[
        "attack",
        s(&p("lh.onnx")),
        "--data",
        s(&data),
        "--split",
        "train",
        "--limit",
        "300",
        "--eps",
        "0.1",
        "-o",
        s(&p("fgsm.npz")),
        "--threads",
        threads,
    ]);
    ok_run(&[
        "attack",
        s(&p("lh.onnx")),
        "--data",
        s(&data),
        "--limit",
        "60",
        "--eps",
        "0.05,0.1",
        "--method",
        "pgd",
        "--steps",
        "5",
        "--random-start",
        "--seed",
        "3",
        "-o",
        s(&p("pgd.npz")),
        "--threads",
        threads,
    ]);
    ok_run(&[
        "repair",
        s(&p("lh.onnx")),
        "--adv",
        s(&p("fgsm.npz")),
        "--train",
        s(&data),
        "-o",
        s(&p("rlh.onnx")),
        "--mode",
        "paper",
        "--threads",
        threads,
    ]);
    ok_run(&[
        "repair",
        s(&p("lh.onnx")),
        "--adv",
        s(&p("fgsm.npz")),
        "--train",
        s(&data),
        "-o",
        s(&p("rlh_margin.onnx")),
        "--mode",
        "margin",
        "--samples",
        "30",
        "--preserve",
        "200",
        "--threads",
        threads,
    ]);
    ["lh.onnx", "fgsm.npz", "pgd.npz", "rlh.onnx", "rlh_margin.onnx"]
        .iter()
        .map(|name| (name.to_string(), std::fs::read(p(name)).unwrap()))
        .collect()
}

#[test]
fn fit_attack_and_repair_are_byte_identical_across_runs_and_thread_counts() {
    let (a, b, c) = (tempdir(), tempdir(), tempdir());
    let first = pipeline(a.path(), "2");
    let second = pipeline(b.path(), "2");
    let third = pipeline(c.path(), "1");
    for ((name, x), ((_, y), (_, z))) in first.iter().zip(second.iter().zip(&third)) {
        assert!(!x.is_empty(), "{name} is empty");
        assert!(x == y, "{name} differs between two runs with the same seed");
        assert!(x == z, "{name} differs between 2 threads and 1");
    }
}

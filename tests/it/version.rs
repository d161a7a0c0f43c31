//! `nnmend --version`: the version, the commit (against `git rev-parse HEAD`), the
//! features of the build under test, the tract version; with `--backend ort`, the
//! ONNX Runtime found (against the Python package's own version); and the same
//! provenance in the models nnmend writes.

use std::process::Command;

use crate::common::*;

/// The commit `git` says the checkout is at, when the binary under test was built here
/// from a git checkout and `git` is installed.
fn git_head() -> Option<String> {
    if std::env::var_os("NNMEND_BIN").is_some() || !root().join(".git").exists() {
        return None;
    }
    let out = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(root())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn version_json() -> serde_json::Value {
    json(&run(&["--version", "--json"]))
}

#[test]
fn version_names_the_commit_features_and_tract() {
    let v = version_json();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["tract"], nnmend::engine::tract::VERSION);
    let mut features = vec![];
    if cfg!(feature = "ort") {
        features.push("ort");
    }
    if cfg!(feature = "cuda") {
        features.push("cuda");
    }
    if cfg!(feature = "faer") {
        features.push("faer");
    }
    assert_eq!(v["features"], serde_json::json!(features));
    let commit = v["commit"].as_str().unwrap();
    match git_head() {
        Some(head) => assert_eq!(commit, head, "the build's commit is not the checkout's HEAD"),
        None => assert!(commit == "unknown" || commit.len() == 40, "{commit}"),
    }

    let out = ok({
        let mut c = nnmend();
        c.arg("--version");
        c
    });
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], format!("nnmend {}", env!("CARGO_PKG_VERSION")));
    assert_eq!(lines[1], format!("commit: {commit}"));
    assert_eq!(lines[2], format!("features: {}", features.join(", ")));
    assert_eq!(lines[3], format!("tract: {}", nnmend::engine::tract::VERSION));
    assert_eq!(lines.len(), 4, "{text}");
}

#[test]
fn version_options_are_refused_elsewhere() {
    fails_with(&run(&["--json"]), 2, "--version");
    fails_with(&run(&["--backend", "ort"]), 2, "--version");
    let model = fixture("tiny_cnn.onnx");
    fails_with(
        &run(&["--version", "inspect", s(&model)]),
        2,
        "--version takes no command",
    );
    fails_with(&run(&["--force"]), 2, "no command given");
}

#[test]
#[cfg(not(feature = "ort"))]
fn version_with_an_ort_backend_says_it_is_not_compiled_in() {
    fails_with(
        &run(&["--version", "--backend", "ort"]),
        1,
        "--backend ort: backend 'ort' is not available: nnmend was built without ONNX Runtime support",
    );
}

#[test]
#[cfg(feature = "ort")]
fn version_with_the_ort_backend_names_the_library_and_its_version() {
    let out = ok({
        let mut c = Command::new(python_bin());
        c.args(["-c", "import onnxruntime; print(onnxruntime.__version__)"]);
        c
    });
    let python_version = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let v = json(&run(&["--version", "--json", "--backend", "ort"]));
    assert_eq!(v["engine"]["name"], "onnxruntime", "{v}");
    assert_eq!(v["engine"]["version"], python_version.as_str(), "{v}");
    let library = v["engine"]["library"].as_str().unwrap();
    assert!(library.contains("libonnxruntime"), "{library}");
    let text = String::from_utf8(
        ok({
            let mut c = nnmend();
            c.args(["--version", "--backend", "ort"]);
            c
        })
        .stdout,
    )
    .unwrap();
    assert!(
        text.contains(&format!("onnxruntime: {python_version} ({library})")),
        "{text}"
    );
}

/// A fitted and a repaired model record the build that wrote them.
#[test]
fn models_record_the_version_and_commit() {
    let tmp = tempdir();
    let p = |name: &str| tmp.path().join(name);
    let data = fixture("mnist-small");
    ok({
        let mut c = nnmend();
        c.args(["fit", s(&fixture("tiny_cnn.onnx")), "--train", s(&data)]);
        c.args(["--limit", "300", "-o", s(&p("lh.onnx"))]);
        c
    });
    ok({
        let mut c = nnmend();
        c.args(["attack", s(&p("lh.onnx")), "--data", s(&data), "--split", "train"]);
        c.args(["--limit", "100", "--eps", "0.1", "-o", s(&p("adv.npz"))]);
        c
    });
    ok({
        let mut c = nnmend();
        c.args([
            "repair",
            s(&p("lh.onnx")),
            "--adv",
            s(&p("adv.npz")),
            "--train",
            s(&data),
        ]);
        c.args(["--mode", "paper", "-o", s(&p("rlh.onnx"))]);
        c
    });
    let v = version_json();
    let meta = |path: &std::path::Path, key: &str| -> String {
        let model = nnmend::onnx::load(path).unwrap().model;
        model
            .metadata_props
            .iter()
            .find(|e| e.key() == key)
            .unwrap_or_else(|| panic!("{}: no {key} in metadata_props", path.display()))
            .value()
            .to_string()
    };
    for (path, prefix) in [(p("lh.onnx"), "nnmend."), (p("rlh.onnx"), "nnmend.repair.")] {
        assert_eq!(meta(&path, &format!("{prefix}version")), v["version"].as_str().unwrap());
        assert_eq!(meta(&path, &format!("{prefix}commit")), v["commit"].as_str().unwrap());
    }
    assert_eq!(meta(&p("rlh.onnx"), "nnmend.commit"), v["commit"].as_str().unwrap());
}

/// Installed by a wheel, nnmend sits beside its virtual environment's `python3`, which
/// is where the `ort` extra put onnxruntime: that python is asked first, even with no
/// NNMEND_PYTHON and no `python3` on PATH.
#[test]
#[cfg(feature = "ort")]
fn ort_is_found_through_the_python_beside_the_binary() {
    use std::os::unix::fs::PermissionsExt;

    let tmp = tempdir();
    let bin = tmp.path().join("nnmend");
    std::fs::copy(nnmend_path(), &bin).unwrap();
    let python = tmp.path().join("python3");
    // A script rather than a link: a venv's python finds its packages through the path
    // it was started by, which `sys.executable` gives.
    let out = ok({
        let mut c = Command::new(python_bin());
        c.args(["-c", "import sys; print(sys.executable)"]);
        c
    });
    let target = String::from_utf8(out.stdout).unwrap().trim().to_string();
    std::fs::write(&python, format!("#!/bin/sh\nexec '{target}' \"$@\"\n")).unwrap();
    std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = Command::new(&bin)
        .args(["--version", "--json", "--backend", "ort"])
        .env_remove("NNMEND_PYTHON")
        .env_remove("ORT_DYLIB_PATH")
        .env("PATH", &empty)
        .output()
        .unwrap();
    let v = json(&out);
    assert_eq!(v["engine"]["name"], "onnxruntime", "{v}");
    assert!(
        v["engine"]["library"].as_str().unwrap().contains("libonnxruntime"),
        "{v}"
    );
    // Without it, nothing is found.
    std::fs::remove_file(&python).unwrap();
    let out = Command::new(&bin)
        .args(["--version", "--backend", "ort"])
        .env_remove("NNMEND_PYTHON")
        .env_remove("ORT_DYLIB_PATH")
        .env("PATH", &empty)
        .output()
        .unwrap();
    fails_with(&out, 1, "the shared library was not found");
}

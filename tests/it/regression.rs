//! Regression tests, named after the fault they keep away.

use crate::common::*;

#[test]
fn an_unwritable_output_is_named_once_and_never_by_its_temporary_path() {
    let tmp = tempdir();
    let out = tmp.path().join("missing").join("x.onnx");
    let run = nnmend()
        .args([
            "fit",
            s(&fixture("tiny_cnn.onnx")),
            "--train",
            s(&fixture("mnist-small")),
        ])
        .args(["--limit", "100", "-o", s(&out)])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&out.display().to_string()), "{stderr}");
    assert!(!stderr.contains(".nnmend-"), "{stderr}");
    assert_eq!(stderr.matches("No such file or directory").count(), 1, "{stderr}");
}

#[test]
fn a_folder_given_as_a_model_says_why_once() {
    let tmp = tempdir();
    let run = nnmend().args(["inspect", s(tmp.path())]).output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.matches("Is a directory").count(), 1, "{stderr}");
}

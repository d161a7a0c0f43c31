//! The binary run as a user runs it: JSON contracts, exit codes, and clear errors
//! (exit code 1, never a panic) for malformed files and impossible requests.

use super::common::*;

#[test]
fn inspect_json_has_the_contract_keys() {
    let model = fixture("mnist_paper.onnx");
    let v = json(&run(&["inspect", s(&model), "--json"]));
    for key in ["name", "shape", "layout"] {
        assert!(v["input"].get(key).is_some(), "input.{key}");
    }
    for key in ["tensor", "node", "op", "feature_shape", "feature_dim", "fallback"] {
        assert!(v["cut"].get(key).is_some(), "cut.{key}");
    }
    assert!(v["head"]["nodes"].is_array() && v["head"]["params"].is_u64());
    assert!(v["params"].is_u64());
    assert_eq!(v["cut"]["op"], "MaxPool");
    assert_eq!(v["cut"]["feature_dim"], 800);
    assert_eq!(v["input"]["layout"], "nchw");
}

#[test]
fn inspect_finds_a_cut_in_every_shared_model() {
    let Some(shared) = shared() else { return };
    for model in shared.models() {
        let v = json(&run(&["inspect", s(&model), "--json"]));
        assert!(v["cut"]["feature_dim"].as_u64().unwrap() > 0, "{}", model.display());
    }
}

#[test]
fn cut_fit_and_eval_work_together() {
    let tmp = tempdir();
    let model = fixture("tiny_cnn.onnx");
    let data = fixture("mnist-small");
    let extractor = tmp.path().join("extractor.onnx");
    let hybrid = tmp.path().join("hybrid.onnx");
    let v = json(&run(&["cut", s(&model), "-o", s(&extractor), "--json"]));
    assert!(extractor.exists());
    assert!(v["cut"]["feature_dim"].as_u64().unwrap() > 0);

    let v = json(&run(&[
        "fit",
        s(&model),
        "--train",
        s(&data),
        "--limit",
        "500",
        "-o",
        s(&hybrid),
        "--json",
    ]));
    assert!(v["svm"]["converged"].as_bool().unwrap());
    assert!(v["train_accuracy"].as_f64().unwrap() > 0.8);

    let npz = fixture("mnist-small-test.npz");
    let v = json(&run(&["eval", s(&model), s(&hybrid), "--data", s(&npz), "--json"]));
    let models = v["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    assert_eq!(models[0]["path"], s(&model));
    assert_eq!(models[1]["path"], s(&hybrid));
    for m in models {
        assert_eq!(m["n"], 500);
        let acc = m["accuracy"].as_f64().unwrap();
        assert!(acc > 0.5 && acc <= 1.0);
        assert_eq!(m["correct"].as_u64().unwrap() as f64 / 500.0, acc);
    }
    // The same images from the IDX folder give the same accuracy.
    let v2 = json(&run(&["eval", s(&hybrid), "--data", s(&data), "--json"]));
    assert_eq!(v2["models"][0]["correct"], models[1]["correct"]);
}

/// `fit`'s text says what its JSON says: the search for C, the chosen C, the accuracies
/// and the file written.
#[test]
fn fit_text_agrees_with_its_json() {
    let tmp = tempdir();
    let model = fixture("tiny_cnn.onnx");
    let data = fixture("mnist-small");
    let hybrid = tmp.path().join("hybrid.onnx");
    let args = |json: bool| {
        let mut a = vec![
            "fit",
            s(&model),
            "--train",
            s(&data),
            "--test",
            s(&data),
            "--limit",
            "300",
            "--c",
            "auto",
            "--c-grid",
            "0.1,1",
            "-o",
            s(&hybrid),
            "--force",
        ];
        if json {
            a.push("--json");
        }
        a
    };
    let v = json(&run(&args(true)));
    let text = String::from_utf8(run(&args(false)).stdout).unwrap();
    let chosen = v["svm"]["c"].as_f64().unwrap();
    assert!(
        text.contains(&format!("C = {chosen:<8} validation accuracy")) && text.contains("<- chosen"),
        "{text}"
    );
    let test = &v["test"];
    let line = format!(
        "test accuracy  {:.4} ({}/{})",
        test["accuracy"].as_f64().unwrap(),
        test["correct"],
        test["n"]
    );
    assert!(text.contains(&line), "{text}\nwants {line}");
    let cut = format!("D = {}", v["cut"]["feature_dim"]);
    assert!(text.contains(&cut), "{text}");
    assert!(text.trim_end().ends_with(&format!("wrote {}", s(&hybrid))), "{text}");
}

#[test]
fn a_failed_accuracy_gate_exits_3() {
    let model = fixture("tiny_cnn.onnx");
    let npz = fixture("mnist-small-test.npz");
    let v = json(&run(&["eval", s(&model), "--data", s(&npz), "--json"]));
    let accuracy = v["models"][0]["accuracy"].as_f64().unwrap();
    assert!(accuracy < 0.99, "{accuracy}");
    // The accuracy itself meets the gate; a point more does not.
    let at = format!("{accuracy}");
    let out = run(&["eval", s(&model), "--data", s(&npz), "--min-accuracy", &at]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bound = format!("{:.4}", accuracy + 0.01);
    let out = run(&["eval", s(&model), "--data", s(&npz), "--min-accuracy", &bound, "--json"]);
    fails_with(
        &out,
        3,
        &format!(
            "gate failed: accuracy {accuracy} below {} (--min-accuracy) for {}\n",
            bound.trim_end_matches('0'),
            s(&model)
        ),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["passed"], false);
    assert_eq!(v["gates"][0]["value"], accuracy);
    fails_with(
        &run(&["eval", s(&model), "--data", s(&npz), "--min-accuracy", "1.01"]),
        2,
        "gates take fractions",
    );
}

#[test]
fn usage_errors_exit_2() {
    let out = run(&["fit", "model.onnx"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&["eval", "m.onnx", "--data", "d", "--backend", "gpu"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn malformed_onnx_is_a_clear_error() {
    let tmp = tempdir();
    let bad = tmp.path().join("broken.onnx");
    std::fs::write(&bad, b"\x08\x07\x12\xff\xff\xff\xff\x0f garbage").unwrap();
    fails_with(&run(&["inspect", s(&bad)]), 1, "broken.onnx");
    let truncated = tmp.path().join("truncated.onnx");
    let bytes = std::fs::read(fixture("tiny_cnn.onnx")).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    fails_with(&run(&["inspect", s(&truncated)]), 1, "truncated.onnx");
}

#[test]
fn malformed_idx_is_a_clear_error() {
    let tmp = tempdir();
    let dir = tmp.path().join("idx");
    std::fs::create_dir(&dir).unwrap();
    let src = fixture("mnist-small");
    for f in ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    // A header that promises far more images than the file holds.
    let mut header = vec![0, 0, 8, 3];
    for d in [60000u32, 28, 28] {
        header.extend(d.to_be_bytes());
    }
    header.extend([0u8; 100]);
    std::fs::remove_file(dir.join("t10k-images-idx3-ubyte.gz")).unwrap();
    std::fs::write(dir.join("t10k-images-idx3-ubyte"), &header).unwrap();
    let model = fixture("tiny_cnn.onnx");
    fails_with(
        &run(&["eval", s(&model), "--data", s(&dir)]),
        1,
        "t10k-images-idx3-ubyte",
    );
}

#[test]
fn malformed_npz_is_a_clear_error() {
    let tmp = tempdir();
    let bad = tmp.path().join("bad.npz");
    std::fs::write(&bad, b"PK\x03\x04 this is not a zip archive").unwrap();
    let model = fixture("tiny_cnn.onnx");
    fails_with(&run(&["eval", s(&model), "--data", s(&bad)]), 1, "bad.npz");
}

#[test]
fn a_model_without_a_feature_extractor_is_refused() {
    let mlp = fixture("tiny_mlp.onnx");
    fails_with(&run(&["inspect", s(&mlp)]), 1, "convolution");
    let tmp = tempdir();
    let out = tmp.path().join("x.onnx");
    fails_with(&run(&["cut", s(&mlp), "-o", s(&out)]), 1, "MLP");
    assert!(!out.exists());
}

#[test]
fn a_missing_at_tensor_is_a_clear_error() {
    let model = fixture("tiny_cnn.onnx");
    fails_with(
        &run(&["inspect", s(&model), "--at", "nowhere"]),
        1,
        "'nowhere' is not in the graph",
    );
}

#[test]
fn an_input_is_never_overwritten() {
    let tmp = tempdir();
    let model = tmp.path().join("m.onnx");
    std::fs::copy(fixture("tiny_cnn.onnx"), &model).unwrap();
    let before = std::fs::read(&model).unwrap();
    fails_with(&run(&["cut", s(&model), "-o", s(&model)]), 2, "overwrite");
    assert_eq!(std::fs::read(&model).unwrap(), before);
    let npz = tmp.path().join("test.npz");
    std::fs::copy(fixture("mnist-small-test.npz"), &npz).unwrap();
    let data = std::fs::read(&npz).unwrap();
    let train = fixture("mnist-small");
    fails_with(
        &run(&["fit", s(&model), "--train", s(&train), "--test", s(&npz), "-o", s(&npz)]),
        2,
        "overwrite",
    );
    fails_with(
        &run(&["features", s(&model), "--data", s(&npz), "-o", s(&npz)]),
        2,
        "overwrite",
    );
    assert_eq!(std::fs::read(&npz).unwrap(), data);
}

#[test]
#[cfg(not(feature = "ort"))]
fn ort_backends_say_they_are_not_compiled_in() {
    let model = fixture("tiny_cnn.onnx");
    fails_with(
        &run(&["inspect", s(&model), "--backend", "ort"]),
        1,
        "without ONNX Runtime support",
    );
}

/// Runs in the default build and in one with `--features ort` alone; the `cuda` build
/// checks instead that ort-cuda fails without a GPU.
#[test]
#[cfg(not(feature = "cuda"))]
fn cuda_without_the_feature_says_so() {
    let model = fixture("tiny_cnn.onnx");
    fails_with(
        &run(&["inspect", s(&model), "--backend", "ort-cuda"]),
        1,
        "built without ONNX Runtime CUDA support (rebuild with `--features cuda`)",
    );
}

/// Regression: cutting a hybrid at its own `features` tensor made the shape probe ask
/// tract for an output nothing produced, and tract panicked.
#[test]
fn cutting_a_hybrid_at_its_features_tensor() {
    let tmp = tempdir();
    let hybrid = tmp.path().join("lh.onnx");
    let model = fixture("tiny_cnn.onnx");
    let data = fixture("mnist-small");
    json(&run(&[
        "fit",
        s(&model),
        "--train",
        s(&data),
        "--limit",
        "200",
        "-o",
        s(&hybrid),
        "--json",
    ]));
    let out = tmp.path().join("cut.onnx");
    let v = json(&run(&["cut", s(&hybrid), "--at", "features", "-o", s(&out), "--json"]));
    assert_eq!(v["cut"]["feature_dim"], 200, "{v}");
    assert!(out.exists());
}

#[test]
fn a_training_set_of_one_class_is_refused_and_missing_classes_are_named() {
    let tmp = tempdir();
    let out = tmp.path().join("lh.onnx");
    let model = fixture("tiny_cnn.onnx");
    let data = fixture("mnist-small");
    // The first MNIST training image is a 5: one class only.
    fails_with(
        &run(&["fit", s(&model), "--train", s(&data), "--limit", "1", "-o", s(&out)]),
        1,
        "hold only class 5; a linear head needs samples of at least two classes",
    );
    assert!(!out.exists());
    // The first ten hold no 6, 7 or 8: the head is written, with a warning naming them.
    let done = run(&["fit", s(&model), "--train", s(&data), "--limit", "10", "-o", s(&out)]);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(stderr.contains("no training image of class(es) [6, 7, 8]"), "{stderr}");
    assert!(out.exists());
}

/// `fit --c auto --scale --json` says which C won on the validation split, with the
/// curve, which solver ran and its convergence measure; the hybrid records the chosen C.
#[test]
fn fit_chooses_c_on_a_validation_split_and_reports_it() {
    let tmp = tempdir();
    let model = fixture("tiny_cnn.onnx");
    let data = fixture("mnist-small");
    let hybrid = tmp.path().join("hybrid.onnx");
    let v = json(&run(&[
        "fit",
        s(&model),
        "--train",
        s(&data),
        "--limit",
        "400",
        "-o",
        s(&hybrid),
        "--c",
        "auto",
        "--c-grid",
        "1,0.01,0.1",
        "--holdout",
        "0.25",
        "--scale",
        "--json",
    ]));
    let svm = &v["svm"];
    let sel = &svm["c_selection"];
    let curve = sel["curve"].as_array().unwrap();
    let cs: Vec<f64> = curve.iter().map(|p| p["c"].as_f64().unwrap()).collect();
    assert_eq!(cs, [0.01, 0.1, 1.0]);
    assert_eq!(
        sel["n_validation"].as_u64().unwrap() + sel["n_fit"].as_u64().unwrap(),
        400
    );
    let best = curve
        .iter()
        .map(|p| p["validation_accuracy"].as_f64().unwrap())
        .fold(0.0, f64::max);
    let chosen = sel["chosen"].as_f64().unwrap();
    let at = curve.iter().find(|p| p["c"].as_f64() == Some(chosen)).unwrap();
    assert_eq!(at["validation_accuracy"].as_f64().unwrap(), best);
    assert_eq!(svm["c"].as_f64(), Some(chosen));
    assert_eq!(svm["standardised"], true);
    assert_eq!(svm["solver_choice"], "auto");
    let solver = svm["solver"].as_str().unwrap();
    assert!(["primal", "dual", "mixed"].contains(&solver), "{solver}");
    for c in svm["classes"].as_array().unwrap() {
        let measure = c["measure"].as_str().unwrap();
        match c["solver"].as_str().unwrap() {
            "primal" => assert_eq!(measure, "relative_gradient_norm"),
            "dual" => assert_eq!(measure, "projected_gradient_spread"),
            other => panic!("solver {other}"),
        }
        assert!(
            c["violation"].as_f64().unwrap() <= c["threshold"].as_f64().unwrap() * 1.01,
            "{c}"
        );
        assert!(c["gap"].as_f64().is_some());
    }
    let m = nnmend::onnx::load(&hybrid).unwrap().model;
    let c = m.metadata_props.iter().find(|e| e.key() == "nnmend.svm.c").unwrap();
    assert_eq!(c.value().parse::<f64>().unwrap(), chosen);
}

/// `fit --c auto --validation DATA` scores the candidates on images given apart: the
/// written hybrid scores on them what the search says the chosen C did.
#[test]
fn fit_chooses_c_on_validation_images_given_apart() {
    let tmp = tempdir();
    let model = fixture("tiny_cnn.onnx");
    let validation = fixture("mnist-small-test.npz");
    let hybrid = tmp.path().join("hybrid.onnx");
    let v = json(&run(&[
        "fit",
        s(&model),
        "--train",
        s(&fixture("mnist-small")),
        "--validation",
        s(&validation),
        "--limit",
        "300",
        "-o",
        s(&hybrid),
        "--c",
        "auto",
        "--c-grid",
        "0.001,0.1,10",
        "--scale",
        "--json",
    ]));
    let sel = &v["svm"]["c_selection"];
    assert_eq!(sel["holdout"], serde_json::Value::Null);
    assert_eq!(
        (sel["n_fit"].as_u64(), sel["n_validation"].as_u64()),
        (Some(300), Some(300))
    );
    let curve = sel["curve"].as_array().unwrap();
    let best = curve
        .iter()
        .map(|p| p["validation_accuracy"].as_f64().unwrap())
        .fold(0.0, f64::max);
    let chosen = sel["chosen"].as_f64().unwrap();
    let at = curve.iter().find(|p| p["c"].as_f64() == Some(chosen)).unwrap();
    assert_eq!(at["validation_accuracy"].as_f64().unwrap(), best);
    let scored = json(&run(&[
        "eval",
        s(&hybrid),
        "--data",
        s(&validation),
        "--limit",
        "300",
        "--json",
    ]));
    let correct = scored["models"][0]["correct"].as_u64().unwrap() as f64;
    assert!((correct - 300.0 * best).abs() <= 1.0, "{correct} of 300 against {best}");
    let m = nnmend::onnx::load(&hybrid).unwrap().model;
    let meta = |k: &str| {
        m.metadata_props
            .iter()
            .find(|e| e.key() == k)
            .map(|e| e.value().to_string())
    };
    assert_eq!(meta("nnmend.svm.c.validation.samples").as_deref(), Some("300"));
    assert_eq!(meta("nnmend.svm.c.holdout"), None);
}

#[test]
fn fit_refuses_svm_options_that_do_not_go_together() {
    let tmp = tempdir();
    let model = fixture("tiny_cnn.onnx");
    let data = fixture("mnist-small");
    let out = tmp.path().join("h.onnx");
    let base = ["fit", s(&model), "--train", s(&data), "--limit", "50", "-o", s(&out)];
    let with = |extra: &[&str]| run(&[&base[..], extra].concat());
    fails_with(&with(&["--c-grid", "0.1,1"]), 2, "--c auto");
    fails_with(&with(&["--holdout", "0.1"]), 2, "--c auto");
    let npz = fixture("mnist-small-test.npz");
    // A data file that cannot be read is named once.
    let missing = tmp.path().join("missing.npz");
    let unread = run(&["fit", s(&model), "--train", s(&missing), "-o", s(&out)]);
    fails_with(&unread, 1, "No such file");
    assert_eq!(String::from_utf8_lossy(&unread.stderr).matches(s(&missing)).count(), 1);
    fails_with(&with(&["--validation", s(&npz)]), 2, "--c auto");
    fails_with(
        &with(&["--c", "auto", "--validation", s(&npz), "--holdout", "0.1"]),
        2,
        "drop --holdout",
    );
    fails_with(
        &with(&["--c", "auto", "--holdout", "1.5"]),
        2,
        "--holdout must be a share",
    );
    fails_with(
        &with(&["--c", "auto", "--c-grid", "1,-2"]),
        2,
        "positive number, got -2",
    );
    fails_with(
        &with(&["--solver", "primal", "--loss", "hinge"]),
        2,
        "--solver primal needs",
    );
    fails_with(&with(&["--c", "often"]), 2, "--c must be a positive number, got often");
    assert!(!out.exists());
}

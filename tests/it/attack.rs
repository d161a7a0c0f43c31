//! FGSM and PGD: agreement with PyTorch, the ε-ball, determinism, the adversarial
//! test set, and the `attack` command as a user runs it.

use ndarray::ArrayD;

use nnmend::attack::{self, adversarial_test_set, Loss, Method, Settings, Target};
use nnmend::data::{self, Dataset, LoadOptions, Split};
use nnmend::engine::tract::Tract;
use nnmend::features::Feed;
use nnmend::hybrid::evaluate;
use nnmend::onnx;

use crate::common::*;

fn mnist_nn() -> onnx::ModelProto {
    onnx::load(&fixture("mnist_paper.onnx")).unwrap().model
}

fn mnist_test(limit: usize) -> Dataset {
    data::load(
        &fixture("mnist-small"),
        &LoadOptions {
            split: Split::Test,
            limit: Some(limit),
        },
    )
    .unwrap()
}

fn feed(threads: usize) -> Feed {
    Feed {
        batch: 32,
        threads,
        ..Feed::default()
    }
}

fn settings(method: Method, eps: &[f32], threads: usize) -> Settings {
    Settings {
        method,
        eps: eps.to_vec(),
        steps: 10,
        step_ratio: 0.25,
        random_start: true,
        early_stop: true,
        seed: 7,
        feed: feed(threads),
    }
}

fn unhex(hex: &str, n: usize) -> Vec<bool> {
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    (0..n).map(|i| bytes[i / 8] & (0x80 >> (i % 8)) != 0).collect()
}

/// FGSM on MNIST-NN over the first `n` test images of `data` against PyTorch's, recorded
/// by `tools/reference/torch_reference.py` on the first 2,000 MNIST test images (the
/// fixture subset's 500 test images are the first 500 of them): the clean predictions,
/// the robust accuracy at each ε, and image by image.
fn fgsm_matches_pytorch(data: &std::path::Path, n: usize) {
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("reference/fgsm_mnist_paper.json")).unwrap()).unwrap();
    let recorded = reference["n"].as_u64().unwrap() as usize;
    assert!(n <= recorded, "PyTorch's values cover {recorded} images, not {n}");
    let ds = data::load(
        data,
        &LoadOptions {
            split: Split::Test,
            limit: Some(n),
        },
    )
    .unwrap();
    assert_eq!(ds.len(), n);
    let target = Target::new(&mnist_nn(), &Tract, &ds, &Feed::default(), Loss::Ce).unwrap();
    let rows = reference["results"].as_array().unwrap();
    let eps: Vec<f32> = rows.iter().map(|r| r["eps"].as_f64().unwrap() as f32).collect();
    let outcome = attack::run(&target, &ds, &settings(Method::Fgsm, &eps, 2)).unwrap();
    let clean_mask = unhex(reference["clean_mask_hex"].as_str().unwrap(), n);
    let clean: Vec<bool> = outcome
        .clean_predicted
        .iter()
        .zip(&ds.labels)
        .map(|(&p, &l)| p as i64 == l)
        .collect();
    assert_eq!(clean, clean_mask, "clean predictions differ from PyTorch's");
    assert_eq!(
        outcome.results[0].clean_correct,
        clean_mask.iter().filter(|&&c| c).count()
    );
    for ((row, ours), adv) in rows.iter().zip(&outcome.results).zip(&outcome.adversarial) {
        let mask = unhex(row["robust_mask_hex"].as_str().unwrap(), n);
        let theirs = mask.iter().filter(|&&r| r).count() as f64 / n as f64;
        assert!(
            (ours.robust_accuracy - theirs).abs() <= 0.003f64.max(3.0 / n as f64),
            "ε = {}: nnmend {} against PyTorch {theirs}",
            ours.eps,
            ours.robust_accuracy
        );
        // Image by image: a gradient entry whose sign f32 rounding can flip decides a
        // handful of borderline images at most.
        let differ = (0..n).filter(|&i| mask[i] != (clean[i] && !adv.success[i])).count();
        assert!(differ <= 3, "ε = {}: {differ} images differ from PyTorch", ours.eps);
    }
}

#[test]
fn fgsm_matches_pytorch_on_the_500_fixture_test_images() {
    fgsm_matches_pytorch(&fixture("mnist-small"), 500);
}

#[test]
fn fgsm_matches_pytorch_on_the_first_2000_mnist_test_images() {
    let Some(shared) = shared() else { return };
    fgsm_matches_pytorch(&shared.path("datasets/mnist"), 2000);
}

fn assert_inside(ds: &Dataset, target: &Target, outcome: &attack::Outcome) {
    let clean = target.pixels.batch(ds, 0..ds.len()).unwrap();
    for adv in &outcome.adversarial {
        assert_eq!(adv.images.shape(), clean.shape());
        for (a, c) in adv.images.iter().zip(clean.iter()) {
            assert!((0.0..=1.0).contains(a), "ε = {}: pixel {a} left [0, 1]", adv.eps);
            assert!(
                (a - c).abs() <= adv.eps + 1e-6,
                "ε = {}: moved {} from {c}",
                adv.eps,
                a - c
            );
        }
    }
}

#[test]
fn adversarial_images_stay_in_the_eps_ball_and_the_unit_box() {
    let ds = mnist_test(48);
    for loss in [Loss::Ce, Loss::Margin] {
        let target = Target::new(&mnist_nn(), &Tract, &ds, &feed(2), loss).unwrap();
        for method in [Method::Fgsm, Method::Pgd] {
            let outcome = attack::run(&target, &ds, &settings(method, &[0.0, 0.05, 0.2, 1.0], 2)).unwrap();
            assert_inside(&ds, &target, &outcome);
            assert_eq!(outcome.results[0].successes, 0, "ε = 0 changed a prediction");
        }
    }
}

#[test]
fn pgd_is_stronger_than_fgsm_and_the_same_for_a_seed() {
    let ds = mnist_test(96);
    let target = Target::new(&mnist_nn(), &Tract, &ds, &feed(2), Loss::Ce).unwrap();
    let fgsm = attack::run(&target, &ds, &settings(Method::Fgsm, &[0.15], 2)).unwrap();
    let pgd = attack::run(&target, &ds, &settings(Method::Pgd, &[0.15], 2)).unwrap();
    assert!(pgd.results[0].robust_correct <= fgsm.results[0].robust_correct);
    assert!(pgd.results[0].successes > 0);
    let again = attack::run(&target, &ds, &settings(Method::Pgd, &[0.15], 1)).unwrap();
    assert_eq!(
        pgd.adversarial[0].images, again.adversarial[0].images,
        "thread count changed PGD"
    );
    let mut other = settings(Method::Pgd, &[0.15], 2);
    other.seed = 8;
    let reseeded = attack::run(&target, &ds, &other).unwrap();
    assert_ne!(
        pgd.adversarial[0].images, reseeded.adversarial[0].images,
        "the seed is ignored"
    );
}

#[test]
fn the_adversarial_test_set_scores_the_same_as_the_robust_accuracy() {
    let ds = mnist_test(96);
    let target = Target::new(&mnist_nn(), &Tract, &ds, &feed(2), Loss::Ce).unwrap();
    let outcome = attack::run(&target, &ds, &settings(Method::Fgsm, &[0.1], 2)).unwrap();
    let adv_set = adversarial_test_set(&ds, &outcome.adversarial[0], target.layout).unwrap();
    let (acc, _) = evaluate(&mnist_nn(), &adv_set, &Tract, &feed(2)).unwrap();
    assert_eq!(acc.correct, outcome.results[0].robust_correct);
    let replaced = (0..ds.len())
        .filter(|&i| adv_set.pixels.to_f32(i..i + 1) != ds.pixels.to_f32(i..i + 1))
        .count();
    assert_eq!(replaced, outcome.results[0].successes);
}

#[test]
fn bad_radii_and_labels_are_refused() {
    let ds = mnist_test(8);
    let target = Target::new(&mnist_nn(), &Tract, &ds, &feed(1), Loss::Ce).unwrap();
    let err = attack::run(&target, &ds, &settings(Method::Fgsm, &[1.5], 1)).unwrap_err();
    assert!(err.to_string().contains("outside [0, 1]"), "{err}");
    let mut bad = ds.clone();
    bad.labels[5] = 12;
    let err = attack::run(&target, &bad, &settings(Method::Fgsm, &[0.1], 1)).unwrap_err();
    assert!(err.to_string().contains("sample 5 has label 12"), "{err}");
}

#[test]
fn attack_writes_the_npz_and_json_contract() {
    let tmp = tempdir();
    let out = tmp.path().join("adv.npz");
    let model = fixture("mnist_paper.onnx");
    let data = fixture("mnist-small");
    let args = [
        "attack",
        s(&model),
        "--data",
        s(&data),
        "--limit",
        "40",
        "--eps",
        "0.05,0.2",
        "-o",
        s(&out),
        "--json",
    ];
    let v = json(&run(&args));
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for r in results {
        for key in ["eps", "n", "clean_accuracy", "robust_accuracy", "success_rate"] {
            assert!(r.get(key).is_some(), "results[].{key}");
        }
        assert_eq!(r["n"], 40);
    }
    let mut npz = ndarray_npy::NpzReader::new(std::fs::File::open(&out).unwrap()).unwrap();
    let x: ArrayD<f32> = npz.by_name("x").unwrap();
    let y: ndarray::Array1<i64> = npz.by_name("y").unwrap();
    let index: ndarray::Array1<i64> = npz.by_name("index").unwrap();
    let eps: ndarray::Array1<f32> = npz.by_name("eps").unwrap();
    let success: ndarray::Array1<bool> = npz.by_name("success").unwrap();
    assert_eq!(x.shape(), &[80, 1, 28, 28]);
    assert_eq!((y.len(), index.len(), eps.len(), success.len()), (80, 80, 80, 80));
    assert_eq!(index[41], 1);
    assert_eq!(eps[0], 0.05);
    let successes = results.iter().map(|r| r["successes"].as_u64().unwrap()).sum::<u64>();
    assert_eq!(success.iter().filter(|&&b| b).count() as u64, successes);
    // The same run gives the same bytes.
    let first = std::fs::read(&out).unwrap();
    let again = tmp.path().join("again.npz");
    let mut args2 = args.to_vec();
    args2[9] = s(&again);
    json(&run(&args2));
    assert_eq!(
        first,
        std::fs::read(&again).unwrap(),
        "attack output is not reproducible"
    );
    // The npz reads back as a data set.
    let v = json(&run(&["eval", s(&model), "--data", s(&out), "--json"]));
    assert_eq!(v["models"][0]["n"], 80);
}

#[test]
fn attack_usage_and_model_errors_are_clear() {
    let model = fixture("mnist_paper.onnx");
    let data = fixture("mnist-small");
    let out = run(&["attack", s(&model), "--data", s(&data), "--eps", "1.5"]);
    fails_with(&out, 2, "outside [0, 1]");
    let out = run(&[
        "attack",
        s(&model),
        "--data",
        s(&data),
        "--eps",
        "0.1",
        "--method",
        "cw",
    ]);
    fails_with(&out, 2, "invalid value");
    let unsupported = fixture("grad/unsupported_op.onnx");
    let out = run(&["grad", s(&unsupported), "-o", "/dev/null/never.onnx"]);
    fails_with(&out, 1, "cannot differentiate the op");
    let before = std::fs::read(&model).unwrap();
    let out = run(&["attack", s(&model), "--data", s(&data), "--eps", "0.1", "-o", s(&model)]);
    fails_with(&out, 2, "mnist_paper.onnx");
    assert_eq!(before, std::fs::read(&model).unwrap(), "the model was overwritten");
}

#[test]
fn a_fitted_hybrid_is_attacked_like_the_network() {
    let tmp = tempdir();
    let model = fixture("tiny_cnn.onnx");
    let data = fixture("mnist-small");
    let hybrid = tmp.path().join("lh.onnx");
    ok({
        let mut c = nnmend();
        c.args([
            "fit",
            s(&model),
            "--train",
            s(&data),
            "--limit",
            "500",
            "-o",
            s(&hybrid),
        ]);
        c
    });
    for m in [&model, &hybrid] {
        let v = json(&run(&[
            "attack",
            s(m),
            "--data",
            s(&data),
            "--limit",
            "64",
            "--eps",
            "0.1",
            "--method",
            "pgd",
            "--steps",
            "5",
            "--json",
        ]));
        let r = &v["results"][0];
        assert!(r["clean_accuracy"].as_f64().unwrap() > 0.8, "{}: {r}", m.display());
        assert!(r["successes"].as_u64().unwrap() > 0, "{}: {r}", m.display());
    }
}

#[test]
fn the_robust_accuracy_protocol_agrees_with_pytorch() {
    // fixtures/reference/pgd_mnist_paper.json: the same protocol (PGD-40 from random
    // starts, CE and margin loss, 3 restarts, early stop) run in PyTorch on MNIST-NN
    // (tools/reference/torch_pgd.py). The random starts differ, so the robust counts
    // agree within a few images, not exactly.
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("reference/pgd_mnist_paper.json")).unwrap()).unwrap();
    let n = reference["n"].as_u64().unwrap() as usize;
    let ds = data::load(
        &fixture("mnist-small-test.npz"),
        &LoadOptions {
            limit: Some(n),
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let results = reference["results"].as_array().unwrap();
    let eps: Vec<f32> = results.iter().map(|r| r["eps"].as_f64().unwrap() as f32).collect();
    let measured = attack::protocol::measure(
        &mnist_nn(),
        &Tract,
        &ds,
        &eps,
        &attack::protocol::Protocol::default(),
        &feed(2),
    )
    .unwrap();
    for (r, m) in results.iter().zip(&measured) {
        let theirs = r["robust_correct"].as_i64().unwrap();
        let ours = m.robustness.robust_correct as i64;
        let tolerance = (n as i64 / 50).max(3);
        assert!(
            (ours - theirs).abs() <= tolerance,
            "eps {}: nnmend {ours} robust of {n}, PyTorch {theirs} (tolerance {tolerance})",
            m.robustness.eps
        );
        assert_eq!(
            (m.robustness.clean_accuracy * n as f64).round() as i64,
            reference["clean_correct"].as_i64().unwrap()
        );
    }
}

/// The gradient graph with the head as an input (what head training attacks through)
/// gives what the hybrid with that head written in gives, whose gradients the grad
/// tests check against finite differences and autograd.
#[test]
fn a_head_given_at_run_time_gives_the_written_hybrids_gradients() {
    use nnmend::attack::HeadTarget;
    use rand::{Rng, SeedableRng};
    let model = mnist_nn();
    let cut = onnx::find_cut(&model, None).unwrap();
    let extractor = onnx::surgery::extractor(&model, &cut, None).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let w = ndarray::Array2::from_shape_fn((10, 800), |_| rng.random_range(-0.3f32..0.3));
    let b = ndarray::Array1::from_shape_fn(10, |_| rng.random_range(-0.3f32..0.3));
    let hybrid = onnx::surgery::hybrid(&model, &cut, w.view(), b.view()).unwrap();
    let ds = mnist_test(12);
    let wt = w.t().as_standard_layout().to_owned();
    for loss in [Loss::Ce, Loss::Margin] {
        let written = Target::new(&hybrid, &Tract, &ds, &Feed::default(), loss).unwrap();
        let given = HeadTarget::new(&extractor, &Tract, &ds, &Feed::default(), loss, 10).unwrap();
        assert_eq!(given.features, 800);
        let x = written.pixels.batch(&ds, 0..ds.len()).unwrap();
        let t = written.one_hot(&ds.labels, 0).unwrap();
        let a = written.gradient(x.view(), &t).unwrap();
        let g = given.gradient(x.view(), &t, &wt, &b).unwrap();
        let close = |p: &ArrayD<f32>, q: &ArrayD<f32>, what: &str| {
            let scale = p.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
            let worst = p.iter().zip(q).fold(0f32, |m, (u, v)| m.max((u - v).abs()));
            assert!(
                worst <= 1e-4 * scale,
                "{loss:?} {what}: differs by {worst} (scale {scale})"
            );
        };
        close(&a.logits.clone().into_dyn(), &g.logits.clone().into_dyn(), "scores");
        close(&a.loss.clone().into_dyn(), &g.loss.clone().into_dyn(), "loss");
        assert!(a.grad.iter().any(|v| v.abs() > 1e-6), "{loss:?}: the gradient is zero");
        close(&a.grad, &g.grad, "gradient");
        let scores = given.features(x.view()).unwrap().dot(&wt) + &b;
        close(&a.logits.into_dyn(), &scores.into_dyn(), "features · Wᵀ + b");
    }
}

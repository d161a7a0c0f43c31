//! One suite, instantiated for every engine compiled in: load and run, the symbolic
//! batch, fixed-batch models, several workers, gradient graphs and hybrid heads, each
//! against onnxruntime-python (values recorded with the fixtures, or run live through
//! `tools/reference/ort_run.py`) and PyTorch's recorded gradients; the workers, which
//! can only change the order of the work, against one worker.
//!
//! Tolerances: 1e-4 on features and logits on the CPU (float32 kernels that sum in
//! different orders), and the same for gradients relative to their largest entry. The
//! CUDA instance uses 1e-3: cuDNN picks convolution algorithms (FFT, Winograd, TF32 off
//! or on by default) whose rounding differs by more.

use ndarray::{Array2, ArrayD};

use nnmend::attack::{gradient_model, Loss};
use nnmend::data::{self, Dataset, LoadOptions, Split};
use nnmend::engine::Engine;
use nnmend::features::{collect, Feed};
use nnmend::hybrid::{evaluate, extract};
use nnmend::onnx::{self, grad::Normalization, ModelProto};

use crate::common::*;

fn model(rel: &str) -> ModelProto {
    onnx::load(&fixture(rel)).unwrap().model
}

fn test_images(limit: usize) -> Dataset {
    data::load(
        &fixture("mnist-small"),
        &LoadOptions {
            split: Split::Test,
            limit: Some(limit),
        },
    )
    .unwrap()
}

fn feed(threads: usize, batch: usize) -> Feed {
    Feed {
        batch,
        threads,
        ..Feed::default()
    }
}

/// Features and logits of the fixture models equal onnxruntime-python's recorded values.
pub fn runs_the_fixtures(engine: &dyn Engine, tol: f32) {
    let ds = test_images(16);
    for name in ["tiny_cnn", "mnist_paper"] {
        let m = model(&format!("{name}.onnx"));
        let (_, features, _) = extract(&m, &ds, engine, None, &feed(1, 64)).unwrap();
        let expected = read_npy2(&fixture(&format!("reference/{name}_features.npy")));
        let diff = max_abs_diff(&features, &expected);
        assert!(diff <= tol, "{}: {name} features differ by {diff}", engine.name());
        let session = engine.prepare(&m).unwrap();
        let logits = collect(session.as_ref(), &ds, &feed(1, 64), 0, "").unwrap();
        let expected = read_npy2(&fixture(&format!("reference/{name}_logits.npy")));
        let diff = max_abs_diff(&logits, &expected);
        assert!(diff <= tol, "{}: {name} logits differ by {diff}", engine.name());
    }
}

/// Any batch size runs, with the logits onnxruntime-python recorded for the first 16
/// images, and a sample's output does not depend on its batch.
pub fn runs_any_batch_size(engine: &dyn Engine, tol: f32) {
    let ds = test_images(40);
    let session = engine.prepare(&model("mnist_paper.onnx")).unwrap();
    let recorded = read_npy2(&fixture("reference/mnist_paper_logits.npy"));
    let one = collect(session.as_ref(), &ds, &feed(1, 1), 0, "").unwrap();
    for batch in [1, 3, 40] {
        let other = collect(session.as_ref(), &ds, &feed(1, batch), 0, "").unwrap();
        let first = other.slice(ndarray::s![..recorded.nrows(), ..]).to_owned();
        let diff = max_abs_diff(&first, &recorded);
        assert!(
            diff <= tol,
            "{}: at batch {batch}, logits differ from onnxruntime's by {diff}",
            engine.name()
        );
        let diff = max_abs_diff(&one, &other);
        assert!(
            diff <= tol,
            "{}: batch {batch} differs from batch 1 by {diff}",
            engine.name()
        );
    }
}

/// Determinism: several workers share a prepared model and give the same rows as one.
pub fn workers_sharing_a_model_give_the_same_rows_as_one(engine: &dyn Engine) {
    let ds = test_images(96);
    let session = engine.prepare(&model("mnist_paper.onnx")).unwrap();
    let one = collect(session.as_ref(), &ds, &feed(1, 16), 0, "").unwrap();
    let two = collect(session.as_ref(), &ds, &feed(2, 16), 0, "").unwrap();
    assert_eq!(one, two, "{}: workers changed the results", engine.name());
}

/// The first `n` fixture test images as float32 [n, 1, 28, 28] in [0, 1], saved as
/// `x.npy` in `dir` for the Python cross-checks.
fn test_images_npy(dir: &std::path::Path, n: usize) -> std::path::PathBuf {
    let file = std::fs::File::open(fixture("mnist-small-test.npz")).unwrap();
    let x: ndarray::Array4<f32> = ndarray_npy::NpzReader::new(file).unwrap().by_name("x").unwrap();
    let path = dir.join("x.npy");
    write_npy(&path, &x.slice(ndarray::s![..n, .., .., ..]).to_owned());
    path
}

/// The first output of the model at `path` in onnxruntime-python on `x` (a model whose
/// batch is fixed to 1 runs there one image at a time).
fn onnxruntime_output(path: &std::path::Path, x: &std::path::Path, dir: &std::path::Path) -> Array2<f32> {
    let out = dir.join("y.npy");
    let mut cmd = python("ort_run.py");
    cmd.arg(path).arg(x).arg(&out);
    ok(cmd);
    read_npy2(&out)
}

/// A model exported with a fixed batch of 1 runs batches, with onnxruntime-python's
/// outputs for one image at a time, and the same as its own one image at a time.
pub fn relaxes_fixed_batches(engine: &dyn Engine, tol: f32) {
    let Some(shared) = shared() else { return };
    let path = shared.path("models/pytorch16_mnist_avgpool.onnx");
    let m = onnx::load(&path).unwrap().model;
    let ds = test_images(12);
    let session = engine.prepare(&m).unwrap();
    let batched = collect(session.as_ref(), &ds, &feed(1, 12), 0, "").unwrap();
    let single = collect(session.as_ref(), &ds, &feed(1, 1), 0, "").unwrap();
    let diff = max_abs_diff(&batched, &single);
    assert!(
        diff <= tol,
        "{}: batch 12 differs from batch 1 by {diff}",
        engine.name()
    );
    let tmp = tempdir();
    let theirs = onnxruntime_output(&path, &test_images_npy(tmp.path(), 12), tmp.path());
    let diff = max_abs_diff(&batched, &theirs);
    assert!(diff <= tol, "{}: differs from onnxruntime's by {diff}", engine.name());
}

/// The gradient graph runs and matches PyTorch autograd on MNIST-NN.
pub fn runs_gradient_graphs(engine: &dyn Engine, tol: f32) {
    let identity = Normalization {
        mean: vec![0.0],
        std: vec![1.0],
        dims: vec![],
    };
    let graph = gradient_model(&model("mnist_paper.onnx"), engine, &identity, Loss::Ce).unwrap();
    let session = engine.prepare(&graph).unwrap();
    let reference = fixture("reference/grad_mnist_paper.npz");
    let mut npz = ndarray_npy::NpzReader::new(std::fs::File::open(&reference).unwrap()).unwrap();
    let x: ArrayD<f32> = npz.by_name("x").unwrap();
    let y: ndarray::Array1<i64> = npz.by_name("y").unwrap();
    let want: ArrayD<f32> = npz.by_name("grad_ce").unwrap();
    let mut t = Array2::<f32>::zeros((y.len(), 10));
    for (i, &l) in y.iter().enumerate() {
        t[[i, l as usize]] = 1.0;
    }
    let outs = session.run_many(&[x.view(), t.view().into_dyn()]).unwrap();
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let diff = outs[2]
        .iter()
        .zip(want.iter())
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    // Plus 2e-7: for confident images softmax − onehot loses digits in f32 (PyTorch's
    // own f32 gradient is 1.1e-7 off its f64 one here).
    assert!(
        diff <= tol * scale + 2e-7,
        "{}: gradients differ by {diff} (largest {scale})",
        engine.name()
    );
}

/// A hybrid fitted with this engine predicts what onnxruntime-python predicts with it.
pub fn runs_hybrid_heads(engine: &dyn Engine) {
    let train = data::load(
        &fixture("mnist-small"),
        &LoadOptions {
            split: Split::Train,
            limit: Some(400),
        },
    )
    .unwrap();
    let settings = nnmend::hybrid::FitSettings {
        at: None,
        svm: Default::default(),
        tuning: Default::default(),
        feed: feed(1, 64),
        kernel: None,
    };
    let fitted = nnmend::hybrid::fit(&model("tiny_cnn.onnx"), &train, engine, &settings).unwrap();
    let ds = test_images(200);
    let (ours, predicted) = evaluate(&fitted.model, &ds, engine, &feed(1, 64)).unwrap();
    let tmp = tempdir();
    let path = tmp.path().join("lh.onnx");
    onnx::save(&fitted.model, &path).unwrap();
    let theirs = onnxruntime_output(&path, &test_images_npy(tmp.path(), 200), tmp.path());
    assert_eq!(
        predicted,
        nnmend::features::argmax_rows(&theirs),
        "{}: predictions differ from onnxruntime's",
        engine.name()
    );
    assert!(ours.accuracy > 0.8, "{}: {ours:?}", engine.name());
}

macro_rules! engine_suite {
    ($name:ident, $engine:expr, $tol:expr) => {
        mod $name {
            use super::*;

            fn engine() -> Box<dyn Engine> {
                $engine
            }

            #[test]
            fn runs_the_fixtures() {
                super::runs_the_fixtures(engine().as_ref(), $tol);
            }

            #[test]
            fn runs_any_batch_size() {
                super::runs_any_batch_size(engine().as_ref(), $tol);
            }

            #[test]
            fn workers_sharing_a_model_give_the_same_rows_as_one() {
                super::workers_sharing_a_model_give_the_same_rows_as_one(engine().as_ref());
            }

            #[test]
            fn relaxes_fixed_batches() {
                super::relaxes_fixed_batches(engine().as_ref(), $tol);
            }

            #[test]
            fn runs_gradient_graphs() {
                super::runs_gradient_graphs(engine().as_ref(), $tol);
            }

            #[test]
            fn runs_hybrid_heads() {
                super::runs_hybrid_heads(engine().as_ref());
            }
        }
    };
}

engine_suite!(tract, Box::new(nnmend::engine::tract::Tract), 1e-4);

#[cfg(feature = "ort")]
engine_suite!(
    ort,
    nnmend::engine::engine_with(
        nnmend::engine::Backend::Ort,
        nnmend::engine::EngineOptions {
            workers: 2,
            ..Default::default()
        }
    )
    .unwrap(),
    1e-4
);

/// The ONNX Runtime backends as a user runs them.
#[cfg(feature = "ort")]
mod ort_cli {
    use crate::common::*;

    fn features(backend: &str, dir: &std::path::Path) -> (ndarray::Array2<f32>, serde_json::Value) {
        let out = dir.join(format!("{backend}.npz"));
        let model = fixture("mnist_paper.onnx");
        let data = fixture("mnist-small");
        let v = json(&run(&[
            "features",
            s(&model),
            "--data",
            s(&data),
            "--backend",
            backend,
            "-o",
            s(&out),
            "--json",
        ]));
        let mut npz = ndarray_npy::NpzReader::new(std::fs::File::open(&out).unwrap()).unwrap();
        (npz.by_name("features").unwrap(), v)
    }

    #[test]
    fn ort_gives_the_same_features_and_predictions_as_tract() {
        let dir = tempdir();
        let (ours, v) = features("ort", dir.path());
        let (theirs, _) = features("tract", dir.path());
        let diff = max_abs_diff(&ours, &theirs);
        assert!(diff <= 1e-4, "features differ by {diff}");
        assert_eq!(v["engine"]["name"], "onnxruntime");
        assert!(v["engine"]["version"].as_str().unwrap().starts_with("1."), "{v}");
        let model = fixture("mnist_paper.onnx");
        let data = fixture("mnist-small");
        let a = json(&run(&[
            "eval",
            s(&model),
            "--data",
            s(&data),
            "--backend",
            "ort",
            "--json",
        ]));
        let b = json(&run(&["eval", s(&model), "--data", s(&data), "--json"]));
        assert_eq!(a["models"][0]["correct"], b["models"][0]["correct"]);
    }

    fn eval_with_library(library: &std::path::Path) -> std::process::Output {
        let model = fixture("tiny_cnn.onnx");
        let data = fixture("mnist-small");
        nnmend()
            .args([
                "eval",
                s(&model),
                "--data",
                s(&data),
                "--limit",
                "8",
                "--backend",
                "ort",
            ])
            .env("ORT_DYLIB_PATH", library)
            .output()
            .unwrap()
    }

    #[test]
    fn a_missing_library_is_a_clear_error() {
        let out = eval_with_library(std::path::Path::new("/nonexistent/libonnxruntime.so"));
        fails_with(
            &out,
            1,
            "ORT_DYLIB_PATH is /nonexistent/libonnxruntime.so, which is not a file",
        );
        fails_with(&out, 1, "pip install onnxruntime");
        // No library anywhere: no ORT_DYLIB_PATH and a Python without onnxruntime.
        let model = fixture("tiny_cnn.onnx");
        let out = nnmend()
            .args(["inspect", s(&model), "--backend", "ort"])
            .env_remove("ORT_DYLIB_PATH")
            .env("NNMEND_PYTHON", "/nonexistent/python3")
            .output()
            .unwrap();
        fails_with(&out, 1, "the shared library was not found");
    }

    #[test]
    fn a_library_that_is_not_onnxruntime_is_refused() {
        let libz = ["/usr/lib/x86_64-linux-gnu/libz.so.1", "/lib/x86_64-linux-gnu/libz.so.1"]
            .iter()
            .map(std::path::Path::new)
            .find(|p| p.exists())
            .expect("libz.so.1 is needed for this test");
        fails_with(&eval_with_library(libz), 1, "does not export `OrtGetApiBase`");
    }

    #[test]
    fn an_old_onnxruntime_is_refused_with_its_version() {
        // tools/test.sh downloads the onnxruntime 1.20.1 wheel into target/ort-old.
        let dir = root().join("target").join("ort-old");
        let wheel = std::fs::read_dir(&dir)
            .ok()
            .and_then(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path()))
                    .find(|p| p.extension().is_some_and(|e| e == "whl"))
            })
            .unwrap_or_else(|| {
                panic!(
                    "no onnxruntime 1.20.1 wheel in {}: tools/test.sh downloads it",
                    dir.display()
                )
            });
        let tmp = tempdir();
        let py = python_bin();
        let script = "import sys, zipfile\nz = zipfile.ZipFile(sys.argv[1])\nname = next(n for n in z.namelist() if '/libonnxruntime.so.' in n)\nprint(z.extract(name, sys.argv[2]))";
        let out = ok({
            let mut c = std::process::Command::new(py);
            c.arg("-c").arg(script).arg(&wheel).arg(tmp.path());
            c
        });
        let lib = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        fails_with(
            &eval_with_library(&lib),
            1,
            "expected version >= '1.22.x', but got '1.20.1'",
        );
    }

    #[test]
    #[cfg(feature = "cuda")]
    fn cuda_without_a_gpu_fails_instead_of_falling_back() {
        // On a GPU machine this test cannot fail the way it expects; gpu-check.sh
        // skips it there.
        let model = fixture("tiny_cnn.onnx");
        let data = fixture("mnist-small");
        let out = run(&[
            "eval",
            s(&model),
            "--data",
            s(&data),
            "--limit",
            "8",
            "--backend",
            "ort-cuda",
        ]);
        fails_with(&out, 1, "the CUDA execution provider could not be used on GPU 0");
    }
}

/// The CUDA instance: only on a machine with a GPU and onnxruntime-gpu
/// (`tools/bench/gpu-check.sh` runs it with `--ignored`).
#[cfg(feature = "cuda")]
mod ort_cuda {
    use super::*;

    fn engine() -> Box<dyn Engine> {
        nnmend::engine::engine_with(nnmend::engine::Backend::OrtCuda, Default::default()).unwrap()
    }

    // cuDNN's algorithm choices round differently from the CPU kernels: 1e-3.
    const TOL: f32 = 1e-3;

    #[test]
    #[ignore = "needs a GPU"]
    fn runs_the_fixtures() {
        super::runs_the_fixtures(engine().as_ref(), TOL);
    }

    #[test]
    #[ignore = "needs a GPU"]
    fn runs_any_batch_size() {
        super::runs_any_batch_size(engine().as_ref(), TOL);
    }

    #[test]
    #[ignore = "needs a GPU"]
    fn relaxes_fixed_batches() {
        super::relaxes_fixed_batches(engine().as_ref(), TOL);
    }

    #[test]
    #[ignore = "needs a GPU"]
    fn runs_gradient_graphs() {
        super::runs_gradient_graphs(engine().as_ref(), TOL);
    }

    #[test]
    #[ignore = "needs a GPU"]
    fn runs_hybrid_heads() {
        super::runs_hybrid_heads(engine().as_ref());
    }
}

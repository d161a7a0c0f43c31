#!/usr/bin/env bash
# Runs the tests from a fresh clone, installing what they need first:
#
#   1. a Python virtual environment in target/venv with the pinned packages of
#      tools/requirements.txt (onnx, onnxruntime, numpy, scikit-learn, scipy), remade
#      when that file changes;
#   2. the onnxruntime 1.20.1 wheel in target/ort-old, downloaded, not installed: a test
#      checks that the ONNX Runtime backend refuses a library that old;
#   3. `cargo test`, then `cargo test --features cuda` (ONNX Runtime and its CUDA
#      execution provider compiled in; without a GPU, a test checks the error).
#
# The tests run the cross-check scripts with the environment's python (NNMEND_PYTHON),
# and the ONNX Runtime backend loads that python's onnxruntime library (ORT_DYLIB_PATH is
# cleared so that no other library is picked up).
#
# Needs Rust (cargo) and python3 with its venv module (Debian: python3-venv). Arguments
# go to both `cargo test` runs, e.g. `tools/test.sh hostile::` runs only those tests.
# Tests that need ../shared are skipped, with a line on stderr, when it is missing;
# NNMEND_SHARED=DIR reads it elsewhere, and NNMEND_REQUIRE_SHARED=1 makes its absence a
# failure (CI sets it).
set -euo pipefail
cd "$(dirname "$0")/.."

started=$SECONDS
python=${PYTHON:-python3}
venv=target/venv
requirements=tools/requirements.txt

if [ ! -x "$venv/bin/python" ] || ! cmp -s "$requirements" "$venv/requirements.txt"; then
    echo "tools/test.sh: making $venv from $requirements" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv" || {
        echo "tools/test.sh: \`$python -m venv\` failed; install Python's venv module (Debian: apt-get install python3-venv)" >&2
        exit 1
    }
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --requirement "$requirements"
    cp "$requirements" "$venv/requirements.txt"
fi

if ! compgen -G "target/ort-old/onnxruntime-1.20.1-*.whl" >/dev/null; then
    echo "tools/test.sh: downloading the onnxruntime 1.20.1 wheel into target/ort-old" >&2
    # Any Python version's wheel holds the same library; 3.11's exists for 1.20.1.
    "$venv/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
        --only-binary=:all: --python-version 3.11 onnxruntime==1.20.1 -d target/ort-old
fi

export NNMEND_PYTHON=$PWD/$venv/bin/python
unset ORT_DYLIB_PATH

cargo test --locked "$@"
cargo test --locked --features cuda "$@"
echo "tools/test.sh: both test builds passed in $((SECONDS - started)) s" >&2

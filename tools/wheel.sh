#!/usr/bin/env bash
# Builds the Python wheel that carries the nnmend binary (maturin, `bindings = "bin"`,
# see pyproject.toml: the default features plus `ort`; the version is Cargo.toml's) into
# target/wheels, and prints its path on stdout.
#
#   tools/wheel.sh            built with the dev profile, the one `cargo test` compiles
#                             (dependencies optimised), so after the tests it costs
#                             only the `ort`-only build of ort and nnmend (~2 min)
#   tools/wheel.sh --release  built with the release profile (a cold build: ~20 min)
#   tools/wheel.sh --check    then installs the wheel with its `ort` extra into a fresh
#                             virtual environment (target/wheel-venv) and runs, from
#                             there and without activating it, `nnmend --version
#                             --backend ort` and the README's quick start on the
#                             fixtures (with --pgd-limit 0: the robust accuracy
#                             takes minutes; the folder is target/wheel-quickstart)
#
# maturin comes from a virtual environment of its own, target/wheel-build, pinned
# below. The binary is stripped. Its platform tag is the manylinux one that its glibc
# symbol versions allow; auditwheel only warns (`--auditwheel warn`) rather than
# repairing or rejecting the wheel, since nnmend links no library beyond the C
# library, and ONNX Runtime is loaded at run time from the onnxruntime wheel.
# Needs python3 with its venv module, and the network for pip (maturin, onnxruntime).
set -euo pipefail
cd "$(dirname "$0")/.."

maturin_pin="maturin==1.16.0"
python=${PYTHON:-python3}
profile=dev
check=false
for arg in "$@"; do
    case $arg in
        --release) profile=release ;;
        --check) check=true ;;
        *) echo "tools/wheel.sh: unknown argument '$arg' (--release, --check)" >&2; exit 2 ;;
    esac
done

build=target/wheel-build
if [ ! -x "$build/bin/maturin" ] || [ "$(cat "$build/pin" 2>/dev/null)" != "$maturin_pin" ]; then
    echo "tools/wheel.sh: installing $maturin_pin into $build" >&2
    rm -rf "$build"
    "$python" -m venv "$build"
    "$build/bin/python" -m pip install --quiet --disable-pip-version-check "$maturin_pin"
    echo "$maturin_pin" > "$build/pin"
fi

started=$SECONDS
out=target/wheels
log=$(mktemp)
trap 'rm -f "$log"' EXIT
"$build/bin/maturin" build --locked --profile "$profile" --strip --auditwheel warn --out "$out" 2>&1 | tee "$log" >&2
wheel=$(sed -n 's/.*Built wheel to //p' "$log" | tail -n 1)
[ -f "$wheel" ] || { echo "tools/wheel.sh: maturin named no wheel" >&2; exit 1; }
echo "tools/wheel.sh: built $wheel ($(du -h "$wheel" | cut -f1)) in $((SECONDS - started)) s" >&2

if $check; then
    venv=target/wheel-venv
    rm -rf "$venv"
    "$python" -m venv "$venv"
    # The pins of the tests' environment, so that onnxruntime is the version tested.
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        --constraint tools/requirements.txt "$wheel[ort]"
    nnmend=$venv/bin/nnmend
    # Not activated, and no NNMEND_PYTHON: the python3 beside the binary is found.
    (
        unset NNMEND_PYTHON ORT_DYLIB_PATH
        "$nnmend" --version --backend ort >&2
        results=target/wheel-quickstart
        rm -rf "$results"
        "$nnmend" run fixtures/mnist_paper.onnx --train fixtures/mnist-small \
            --test fixtures/mnist-small --eps 0.05,0.1,0.15,0.2 --repair-samples 5 --pool 500 \
            --pgd-limit 0 --out "$results" >&2
        test -s "$results/report.json" && test -s "$results/report.md"
    )
    echo "tools/wheel.sh: the installed wheel ran the quick start in $((SECONDS - started)) s" >&2
fi
echo "$wheel"

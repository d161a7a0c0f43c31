#!/usr/bin/env bash
# GPU check for the ONNX Runtime CUDA backend (`--backend ort-cuda`), for a session that
# is lent the H200 machine through the `device` tool.
#
# The device machine has CUDA 13, PyTorch, onnx and onnxruntime, but no Rust and no
# network, and each `run` call carries at most 64 MiB. So the binaries are built here,
# stripped and carried; the data come along in a second carry. If the machine's own
# onnxruntime lacks CUDAExecutionProvider, onnxruntime-gpu's libraries (PyPI 1.31 is
# built for CUDA 13; libonnxruntime_providers_cuda.so alone is 284 MB, 185 MB with
# xz -9) go over in xz chunks of 60 MB across calls while the machine stays warm
# (/tmp/nnmend-gpu survives between calls until the machine is given back), and are
# put back together and checked with sha256 there.
#
# Steps (each `device` call is one line below; run them in order):
#   here:    tools/bench/gpu-check.sh prepare              build, strip, stage target/gpu-carry/
#   device:  tools/bench/gpu-check.sh probe                carry target/gpu-carry/bin; ~1 min
#            (reports whether the machine's onnxruntime offers CUDAExecutionProvider)
#   device:  tools/bench/gpu-check.sh receive data         carry target/gpu-carry/data; ~1 min
#   only if probe said no CUDA EP:
#     here:  tools/bench/gpu-check.sh prepare-ort          pip download onnxruntime-gpu, split
#     device: tools/bench/gpu-check.sh receive ort-N       carry target/gpu-carry/ort-N; one
#            call per chunk (4 chunks, ~1 min each)
#   device:  tools/bench/gpu-check.sh run                  suite + benchmark; ~5 min; results
#            in $OUT (gpu-check.md, gpu-check.json)
# GPU_CHECK_DRY=1 makes probe/receive/run work on this machine (CPU provider, the CPU
# instance of the suite), to check the script before spending device time.
#
# Expected device time: start ~2-3 min, probe 0.5 min, data 0.5 min, the engine suite on
# ort-cuda 1 min, the benchmark (MNIST 70k and CIFAR 10k extraction, FGSM on 2,000
# MNIST images, against onnxruntime-python's CUDA EP) 3 min: about 8 minutes, 12 with
# the library chunks; within the 15-minute budget with room for one rerun of `run`.
set -euo pipefail
cd "$(dirname "$0")/../.."

CARRY=target/gpu-carry
STATE=/tmp/nnmend-gpu
ORT_GPU_VERSION=1.31.0

die() { echo "gpu-check: $*" >&2; exit 1; }

prepare() {
    cargo build --release --features cuda
    cargo test --release --features cuda --no-run --message-format=json 2>/dev/null \
        | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "it" and m.get("executable"):
        print(m["executable"])' > "$CARRY.it-path" || true
    mkdir -p "$CARRY/bin" "$CARRY/data"
    strip -o "$CARRY/bin/nnmend" target/release/nnmend
    test -s "$CARRY.it-path" || die "no integration-test binary was built"
    strip -o "$CARRY/bin/it" "$(cat "$CARRY.it-path")"
    cp ../shared/datasets/mnist/*.gz "$CARRY/data/"
    cp ../shared/datasets/cifar10-jpeg.tar.gz ../shared/models/pytorch18_cifar_resnet2b.onnx \
        ../shared/models/pytorch16_mnist_avgpool.onnx "$CARRY/data/"
    du -sh "$CARRY"/bin "$CARRY"/data
    for d in bin data; do
        size=$(du -sm "$CARRY/$d" | cut -f1)
        [ "$size" -lt 64 ] || die "$CARRY/$d is ${size} MiB, over the 64 MiB a call carries"
    done
    echo "staged; next: device call \`tools/bench/gpu-check.sh probe\` carrying $CARRY/bin"
}

prepare_ort() {
    local wheel_dir=target/ort-gpu
    python3 -m pip download --no-deps "onnxruntime-gpu==$ORT_GPU_VERSION" -d "$wheel_dir"
    rm -rf "$wheel_dir/x" && mkdir -p "$wheel_dir/x"
    python3 - "$wheel_dir" <<'PY'
import glob, sys, zipfile
d = sys.argv[1]
z = zipfile.ZipFile(glob.glob(f"{d}/onnxruntime_gpu-*.whl")[0])
for n in z.namelist():
    if "/capi/lib" in n and ".so" in n:
        z.extract(n, f"{d}/x")
PY
    tar -C "$wheel_dir/x/onnxruntime/capi" -cf - . | xz -9 -T2 > "$wheel_dir/ort-gpu.tar.xz"
    sha256sum "$wheel_dir/ort-gpu.tar.xz" | cut -d' ' -f1 > "$wheel_dir/ort-gpu.sha256"
    split -b 60M -d -a 1 "$wheel_dir/ort-gpu.tar.xz" "$wheel_dir/part-"
    local i=0
    for part in "$wheel_dir"/part-*; do
        mkdir -p "$CARRY/ort-$i"
        mv "$part" "$CARRY/ort-$i/part"
        cp "$wheel_dir/ort-gpu.sha256" "$CARRY/ort-$i/"
        i=$((i + 1))
    done
    echo "$i chunks staged: device calls \`tools/bench/gpu-check.sh receive ort-K\` for K in 0..$((i - 1))"
}

probe() {
    mkdir -p "$STATE"
    cp -r "$CARRY/bin" "$STATE/"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    python3 -c 'import onnxruntime as o; print("onnxruntime", o.__version__, o.get_available_providers())'
    python3 -c 'import onnxruntime as o, sys; sys.exit(0 if "CUDAExecutionProvider" in o.get_available_providers() else 3)' \
        && echo "CUDA EP available in the machine's onnxruntime: no library chunks needed" \
        || echo "no CUDA EP in the machine's onnxruntime: run prepare-ort here and carry the chunks"
}

receive() {
    local what=$1
    mkdir -p "$STATE"
    case "$what" in
        data) cp -r "$CARRY/data" "$STATE/" ;;
        ort-*) mkdir -p "$STATE/ort"; cp "$CARRY/$what/part" "$STATE/ort/part-${what#ort-}"
               cp "$CARRY/$what/ort-gpu.sha256" "$STATE/ort/" ;;
        *) die "receive what? (data, ort-N)" ;;
    esac
    ls -la "$STATE"
}

ort_library() {
    if [ -d "$STATE/ort" ]; then
        if [ ! -d "$STATE/ort/lib" ]; then
            cat "$STATE"/ort/part-* > "$STATE/ort/ort-gpu.tar.xz"
            [ "$(sha256sum "$STATE/ort/ort-gpu.tar.xz" | cut -d' ' -f1)" = "$(cat "$STATE/ort/ort-gpu.sha256")" ] \
                || die "the reassembled onnxruntime-gpu libraries fail their sha256 check"
            mkdir -p "$STATE/ort/lib" && xz -dc "$STATE/ort/ort-gpu.tar.xz" | tar -C "$STATE/ort/lib" -xf -
        fi
        ls "$STATE"/ort/lib/libonnxruntime.so.* | head -1
    else
        python3 -c 'import onnxruntime, os, glob; print(sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so.*")))[-1])'
    fi
}

run_checks() {
    local out=${OUT:-/tmp/gpu-check-out}
    mkdir -p "$out" "$STATE/work"
    local lib; lib=$(ort_library)
    export ORT_DYLIB_PATH=$lib LD_LIBRARY_PATH="$(dirname "$lib"):${LD_LIBRARY_PATH:-}"
    local nn="$STATE/bin/nnmend" data="$STATE/data" w="$STATE/work"
    {
        echo "# gpu-check $(date -u +%FT%TZ)"
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
        echo "ONNX Runtime library: $lib"
        echo
        echo "## engine suite on ort-cuda${GPU_CHECK_DRY:+ (dry run: the CPU instance)}"
        # The suite reads ../shared: give it one beside the repository copy.
        if [ ! -d ../shared/datasets/mnist ]; then
            mkdir -p ../shared/datasets/mnist ../shared/models
            cp "$data"/*.gz ../shared/datasets/mnist/
            cp "$data"/pytorch16_mnist_avgpool.onnx ../shared/models/
        fi
        if [ -n "${GPU_CHECK_DRY:-}" ]; then
            # A dry run on a machine without a GPU: the CPU instance of the same suite.
            NNMEND_ROOT=$PWD NNMEND_BIN=$nn "$STATE/bin/it" engines::ort:: --test-threads 1 2>&1 | tail -12
        else
            NNMEND_ROOT=$PWD NNMEND_BIN=$nn "$STATE/bin/it" engines::ort_cuda --ignored --test-threads 1 2>&1 | tail -12
        fi
        echo
        echo "## benchmark"
        mkdir -p "$w/mnist" && cp "$data"/*.gz "$w/mnist/"
        [ -d "$w/cifar10" ] || tar -C "$w" -xzf "$data/cifar10-jpeg.tar.gz"
        python3 tools/bench/gpu-bench.py --nnmend "$nn" --mnist "$w/mnist" --cifar "$w/cifar10" \
            --cifar-model "$data/pytorch18_cifar_resnet2b.onnx" --json "$out/gpu-check.json" \
            --provider "$([ -n "${GPU_CHECK_DRY:-}" ] && echo cpu || echo cuda)"
    } 2>&1 | tee "$out/gpu-check.md"
}

case "${1:-}" in
    prepare) prepare ;;
    prepare-ort) prepare_ort ;;
    probe) probe ;;
    receive) receive "${2:-}" ;;
    run) run_checks ;;
    *) sed -n '2,30p' "$0"; exit 2 ;;
esac

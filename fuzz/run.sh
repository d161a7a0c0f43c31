#!/usr/bin/env bash
# Runs one fuzz target until 10^6 executions or its time budget, whichever comes
# first, and prints libFuzzer's final statistics and the corpus size.
#
#   fuzz/run.sh TARGET [SECONDS] [extra libFuzzer flags...]
#
# Stable Rust: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z flags. No sanitizer
# (nnmend forbids unsafe code; see docs/TESTING.md), debug assertions and overflow checks on.
# -rss_limit_mb=1024 makes any input that needs more than 1 GB a finding.
set -euo pipefail
cd "$(dirname "$0")"
target=$1
seconds=${2:-1800}
shift $(( $# > 1 ? 2 : 1 ))
case $target in
  onnx_decode) max_len=65536 ;;
  cifar) max_len=16384 ;;
  npz | idx | image_folder) max_len=8192 ;;
  *) max_len=4096 ;;
esac
mkdir -p "corpus/$target" "artifacts/$target"
# The targets write each input's files here; libFuzzer exits without cleaning up.
shm=/dev/shm
[ -d "$shm" ] || shm=${TMPDIR:-/tmp}
NNMEND_FUZZ_SCRATCH=$(mktemp -d "$shm/nnmend-fuzz.XXXXXX")
export NNMEND_FUZZ_SCRATCH
trap 'rm -rf "$NNMEND_FUZZ_SCRATCH"' EXIT
RUSTC_BOOTSTRAP=1 cargo fuzz run -O -a --sanitizer none "$target" -- \
  -runs=1000000 -max_total_time="$seconds" -rss_limit_mb=1024 -timeout=10 \
  -max_len="$max_len" -print_final_stats=1 "$@"
echo "corpus/$target: $(ls "corpus/$target" | wc -l) inputs, $(du -sk "corpus/$target" | cut -f1) KiB"

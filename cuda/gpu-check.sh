#!/usr/bin/env bash
# gpu-check.sh: builds and runs every GPU test on a machine with an NVIDIA
# driver (no CUDA toolkit needed: the driver is loaded at run time), and
# prints one JSON line per GPU benchmark row, then "N passed, N failed".
# Run from the repository root: bash cuda/gpu-check.sh
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v cargo >/dev/null; then
  # A fresh GPU machine: the Rust toolchain from the package registry.
  if command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq cargo rustc >/dev/null
  fi
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

passed=0 failed=0
check() { # name command...
  local name=$1; shift
  if "$@" >"/tmp/gpu-check-$name.log" 2>&1; then
    passed=$((passed + 1)); echo "ok      $name"
  else
    failed=$((failed + 1)); echo "FAILED  $name"; tail -30 "/tmp/gpu-check-$name.log"
  fi
}

FEATURES="--features rustray/cuda"
cargo build --release --workspace --tests $FEATURES 2>&1 | tail -3
check device-layer cargo test --release -p rustray-cuda
check rustray-cuda-module cargo test --release $FEATURES --lib cuda
# The scheduling tests declare their own nodes' GPUs (ten of them, say):
# a CUDA_VISIBLE_DEVICES from the machine's environment would bound them.
check gpu-scheduling env -u CUDA_VISIBLE_DEVICES cargo test --release $FEATURES --test gpus
# The GPU half of test_gpu_tasks_use_their_device must have run here.
# The GPU halves of the GPU tests must have run here.
for needle in "ran on a GPU" "device objects ran on a GPU"; do
  if grep -q "$needle" /tmp/gpu-check-gpu-scheduling.log; then
    passed=$((passed + 1)); echo "ok      $needle"
  else
    failed=$((failed + 1)); echo "FAILED  $needle (no GPU seen)"
  fi
done
# The GPU benchmark rows (one JSON line each).
cargo bench --bench gpu $FEATURES 2>/tmp/gpu-check-bench.log | grep '^{' || {
  failed=$((failed + 1)); echo "FAILED  gpu benchmark"; tail -20 /tmp/gpu-check-bench.log; }
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]

#!/usr/bin/env bash
# gpu-check.sh: builds and runs every GPU test on a machine with an NVIDIA
# driver (no CUDA toolkit needed: the driver is loaded at run time), and
# prints one JSON line per GPU benchmark row, then "N passed, N failed".
#
#   bash cuda/gpu-check.sh              build here, then run here
#   bash cuda/gpu-check.sh --stage DIR  build here, copy the test and bench
#                                       programs into DIR, run nothing
#   bash cuda/gpu-check.sh --from DIR   run the programs staged in DIR (for a
#                                       GPU machine that cannot reach the
#                                       package registries to build)
#
# Run from the repository root. Logs: /tmp/gpu-check-*.log.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mode=all dir=
case "${1:-}" in
  --stage) mode=stage dir=${2:?--stage needs a folder} ;;
  --from) mode=from dir=${2:?--from needs a folder} ;;
  "") ;;
  *) echo "usage: $0 [--stage DIR | --from DIR]" >&2; exit 2 ;;
esac

# The programs a check needs, by the name the check runs them under.
PROGRAMS="device-layer rustray-lib gpus bench-gpu"

# Builds with the `cuda` feature and copies each program to $1/<name>.
stage() {
  local out=$1 json
  mkdir -p "$out"
  if ! command -v cargo >/dev/null && command -v apt-get >/dev/null; then
    # A fresh machine: the Rust toolchain from the package registry.
    apt-get update -qq && apt-get install -y -qq cargo rustc >/dev/null
  fi
  json=$( (cargo test --release --workspace --features rustray/cuda --no-run --message-format=json &&
    cargo bench --bench gpu --features rustray/cuda --no-run --message-format=json) 2>/dev/null) || {
    echo "the build failed:"
    cargo test --release --workspace --features rustray/cuda --no-run 2>&1 | tail -30
    return 1
  }
  # Each artifact line names its target and, for a program, its path.
  pick() { # target-name kind
    grep "\"name\":\"$1\",\"src_path\"" <<<"$json" | grep "\"kind\":\[\"$2\"\]" |
      grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4
  }
  local name target kind exe
  for name in $PROGRAMS; do
    case $name in
      device-layer) target=rustray_cuda kind=lib ;;
      rustray-lib) target=rustray kind=lib ;;
      gpus) target=gpus kind=test ;;
      bench-gpu) target=gpu kind=bench ;;
    esac
    exe=$(pick "$target" "$kind")
    [[ -n $exe ]] || { echo "no program built for $name ($target, $kind)"; return 1; }
    cp "$exe" "$out/$name"
    # Debug sections are most of each file; a staged copy travels.
    strip --strip-debug "$out/$name" 2>/dev/null || true
  done
  echo "staged in $out: $PROGRAMS"
}

case $mode in
  stage) stage "$dir"; exit ;;
  all) dir=$(mktemp -d /tmp/gpu-check.XXXXXX); stage "$dir" || exit 1 ;;
esac
for name in $PROGRAMS; do
  [[ -x $dir/$name ]] || { echo "$dir/$name is missing: stage it first"; exit 1; }
done

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

export RUST_BACKTRACE=1
check device-layer "$dir/device-layer" --test-threads=1
check rustray-cuda-module "$dir/rustray-lib" cuda:: --test-threads=1
# The scheduling tests declare their own nodes' GPUs (ten of them, say):
# a CUDA_VISIBLE_DEVICES from the machine's environment would bound them.
check gpu-scheduling env -u CUDA_VISIBLE_DEVICES "$dir/gpus"
# The GPU halves of the GPU tests must have run here.
for needle in "ran on a GPU" "device objects ran on a GPU"; do
  if grep -q "$needle" /tmp/gpu-check-gpu-scheduling.log; then
    passed=$((passed + 1)); echo "ok      $needle"
  else
    failed=$((failed + 1)); echo "FAILED  $needle (no GPU seen)"
  fi
done
# The GPU benchmark rows (one JSON line each).
rows=$("$dir/bench-gpu" 2>/tmp/gpu-check-bench.log | grep '^{')
if [[ $(grep -c . <<<"$rows") -ge 3 ]]; then
  passed=$((passed + 1)); echo "$rows"
else
  failed=$((failed + 1)); echo "FAILED  gpu benchmark"; echo "$rows"; tail -20 /tmp/gpu-check-bench.log
fi
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]

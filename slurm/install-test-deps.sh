#!/usr/bin/env bash
# Installs, from Debian, what the tests need beyond the Rust toolchain and
# the emulated Slurm cluster (slurm/emu-up.sh installs that):
#   libfabric1, libfabric-dev, libfabric-bin: the data plane loads
#     libfabric.so.1 at run time (nothing links it); the ABI test checks our
#     struct layouts against the headers; fi_info for a person debugging;
#   libopenmpi-dev, openmpi-bin, libclang-dev: the `mpi` feature (rsmpi
#     builds its bindings with bindgen against the MPI headers; mpirun).
# Idempotent: installs only what is missing.
set -euo pipefail
need=()
ldconfig -p | grep -q 'libfabric\.so\.1 ' || need+=(libfabric1)
[[ -f /usr/include/rdma/fabric.h ]] || need+=(libfabric-dev)
command -v fi_info >/dev/null || need+=(libfabric-bin)
command -v mpicc >/dev/null || need+=(libopenmpi-dev)
command -v mpirun >/dev/null || need+=(openmpi-bin)
compgen -G "/usr/lib/llvm-*/lib/libclang.so" >/dev/null || need+=(libclang-dev)
((${#need[@]} == 0)) && exit 0
[[ $(id -u) -eq 0 ]] || { echo "install-test-deps.sh: need root to apt-get install ${need[*]}" >&2; exit 1; }
install() { apt-get -o DPkg::Lock::Timeout=120 install -y --no-install-recommends "${need[@]}"; }
install || { apt-get -o DPkg::Lock::Timeout=120 update && install; }

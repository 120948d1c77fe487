#!/usr/bin/env bash
# Installs what the fabric tests need from Debian: libfabric's runtime (the
# data plane loads libfabric.so.1 at run time; nothing links it) and its
# headers (the ABI test checks our struct layouts against them). Idempotent:
# does nothing when both are there.
set -euo pipefail
need=()
ldconfig -p | grep -q 'libfabric\.so\.1 ' || need+=(libfabric1)
[[ -f /usr/include/rdma/fabric.h ]] || need+=(libfabric-dev)
command -v fi_info >/dev/null || need+=(libfabric-bin)
((${#need[@]} == 0)) && exit 0
[[ $(id -u) -eq 0 ]] || { echo "install-fabric.sh: need root to apt-get install ${need[*]}" >&2; exit 1; }
install() { apt-get -o DPkg::Lock::Timeout=120 install -y --no-install-recommends "${need[@]}"; }
install || { apt-get -o DPkg::Lock::Timeout=120 update && install; }

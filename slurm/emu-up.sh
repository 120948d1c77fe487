#!/usr/bin/env bash
# emu-up.sh N — bring up an emulated N-node Slurm cluster on this one machine.
#
# Layout (see README.md in this directory):
#   root netns : bridge rremu0 = $SUBNET.1/24, munged (private socket), clients (sinfo/srun/sbatch)
#   netns rremu-ctl   : eth0 = $SUBNET.2, own UTS ns (hostname slurmctl) -> slurmctld
#   netns rremu-nodeI : eth0 = $SUBNET.(10+I), own UTS ns (hostname nodeI) -> slurmd
#
# Idempotent: if a healthy cluster with the same shape is already up it returns at once;
# otherwise it tears down whatever is left over (via emu-down.sh) and starts afresh.
# Needs root (namespaces, apt, /etc/hosts). Exits non-zero with the tail of the
# relevant daemon log when something does not come up.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# ---- knobs (environment) ----------------------------------------------------
STATE=${RUSTRAY_EMU_STATE:-/var/tmp/rustray-slurm-emu}   # state, logs, pids, spool, munge key
CPUS=${RUSTRAY_EMU_CPUS:-2}          # CPUs per node as told to Slurm (not enforced)
MEM=${RUSTRAY_EMU_MEM:-2048}         # RealMemory per node, MB (bookkeeping only)
GPUS=${RUSTRAY_EMU_GPUS:-2}          # fake GPUs per node (0 = no GRES)
SUBNET=${RUSTRAY_EMU_SUBNET:-10.77.0} # first three octets of the private /24
TIMEOUT=${RUSTRAY_EMU_TIMEOUT:-90}   # seconds to wait for N idle nodes
KEEP_ON_FAIL=${RUSTRAY_EMU_KEEP_ON_FAIL:-0}  # 1 = leave daemons running after a failed start

# Fixed names: everything the harness creates carries the "rremu" prefix or marker,
# so emu-down.sh can find exactly (and only) its own things.
BR=rremu0
CTL_NS=rremu-ctl
CTL_VETH=rremu-vc
MARK="managed by rustray-slurm-emu"
HOSTS_BEGIN="# BEGIN rustray-slurm-emu"
HOSTS_END="# END rustray-slurm-emu"
CONF=/etc/slurm/slurm.conf
GRES_CONF=/etc/slurm/gres.conf
PKGS=(slurmctld slurmd slurm-client munge iproute2 util-linux python3)

export LC_ALL=C

err() { echo "emu-up: ERROR: $*" >&2; }
log() { echo "emu-up: $*"; }

usage() { echo "usage: $0 N   (N = number of emulated nodes, 1..200)" >&2; exit 2; }
[[ $# -eq 1 && $1 =~ ^[0-9]+$ ]] || usage
N=$1
((N >= 1 && N <= 200)) || usage
[[ $CPUS =~ ^[1-9][0-9]*$ ]] || { err "RUSTRAY_EMU_CPUS must be a positive integer"; exit 2; }
[[ $MEM =~ ^[1-9][0-9]*$ ]] || { err "RUSTRAY_EMU_MEM must be a positive integer (MB)"; exit 2; }
[[ $GPUS =~ ^[0-9]+$ ]] || { err "RUSTRAY_EMU_GPUS must be a non-negative integer"; exit 2; }
[[ $TIMEOUT =~ ^[1-9][0-9]*$ ]] || { err "RUSTRAY_EMU_TIMEOUT must be a positive integer"; exit 2; }
# Only a private /24 we own: refuse anything that is not three octets.
if ! [[ $SUBNET =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})$ ]] ||
   ((BASH_REMATCH[1] > 255 || BASH_REMATCH[2] > 255 || BASH_REMATCH[3] > 255)) ||
   [[ $SUBNET == 127.* ]]; then
  err "RUSTRAY_EMU_SUBNET must be three octets like 10.77.0 (not 127.x)"; exit 2
fi
[[ $(id -u) -eq 0 ]] || { err "must run as root (network namespaces, apt-get, /etc/hosts)"; exit 1; }

mkdir -p "$STATE"
# One harness operation at a time (up/down share this lock; emu-down.sh skips it when we call it).
exec 9>"$STATE/lock"
flock -w 120 9 || { err "another emu-up/emu-down holds $STATE/lock"; exit 1; }
export RUSTRAY_EMU_LOCKED=1

# ---- helpers -------------------------------------------------------------------
# A PID is alive only if /proc has it and it is not a zombie: PID 1 on this machine reaps
# orphans lazily, so exited daemons linger as state Z for seconds.
proc_field() { # pid -> "state starttime" (fields 3 and 22 of /proc/PID/stat), fails if gone
  local s
  s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  s=${s##*) }   # drop "pid (comm) ", comm may contain spaces
  local -a f
  read -ra f <<<"$s"
  echo "${f[0]} ${f[19]}"
}
alive() { local st; st=$(proc_field "$1") || return 1; [[ ${st%% *} != Z && ${st%% *} != X ]]; }

# Record "pid starttime name" so emu-down.sh kills exactly this process and not a recycled PID.
record_pid() { # name pid
  local st
  st=$(proc_field "$2") || return 1
  echo "$2 ${st#* } $1" >"$STATE/pids/$1"
}

wait_pidfile() { # file seconds -> prints pid once the file names a live process
  local f=$1 end=$((SECONDS + $2)) pid
  while ((SECONDS < end)); do
    if [[ -s $f ]]; then
      pid=$(tr -dc 0-9 <"$f")
      if [[ -n $pid ]] && alive "$pid"; then echo "$pid"; return 0; fi
    fi
    sleep 0.1
  done
  return 1
}

sinfo_states() { timeout 10 sinfo -h -N -o '%N %T' 2>/dev/null | sort -u; }

fail() { # message logfile...
  local msg=$1; shift
  err "$msg"
  local f
  for f in "$@"; do
    [[ -f $f ]] || continue
    echo "----- tail of $f -----" >&2
    tail -n 25 "$f" >&2
  done
  if [[ $KEEP_ON_FAIL != 1 ]]; then
    err "tearing down (set RUSTRAY_EMU_KEEP_ON_FAIL=1 to keep the daemons for debugging); logs stay in $STATE/log"
    bash "$HERE/emu-down.sh" >&2 || true
  fi
  exit 1
}

# The shape of the cluster; a running cluster is reused only if this matches (the checksum
# of this script is part of it, so an edited harness never reuses an old configuration).
REV=$(cksum <"${BASH_SOURCE[0]}" | cut -d' ' -f1)
WANT="N=$N CPUS=$CPUS MEM=$MEM GPUS=$GPUS SUBNET=$SUBNET STATE=$STATE REV=$REV"

# ---- 0. fast path: already up with this shape? ------------------------------------------
healthy() {
  [[ -f $STATE/cluster.env && $(cat "$STATE/cluster.env") == "$WANT" ]] || return 1
  head -n1 "$CONF" 2>/dev/null | grep -q "$MARK" || return 1
  grep -qx "$HOSTS_BEGIN" /etc/hosts || return 1
  [[ -e /run/netns/$CTL_NS ]] || return 1
  local f pid start name st n=0
  for f in "$STATE"/pids/*; do
    [[ -f $f ]] || return 1
    read -r pid start name <"$f"
    st=$(proc_field "$pid") || return 1
    [[ ${st%% *} != Z && ${st#* } == "$start" ]] || return 1
    n=$((n + 1))
  done
  ((n == N + 2)) || return 1   # munged + slurmctld + N slurmd
  # Nodes may be busy with jobs (alloc/mix/completing), but none may be down/drained/unknown.
  local states s total=0 ok=0
  states=$(sinfo_states) || return 1
  while read -r _ s; do
    [[ -n $s ]] || continue
    total=$((total + 1))
    [[ $s =~ ^(idle|allocated|mixed|completing)$ ]] && ok=$((ok + 1))
  done <<<"$states"
  ((total == N && ok == N))
}
if command -v sinfo >/dev/null && command -v slurmd >/dev/null && healthy; then
  log "already up: $N nodes ($WANT)"
  exit 0
fi

# ---- 1. packages ----------------------------------------------------------------------
missing=()
for p in "${PKGS[@]}"; do
  [[ $(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true) == installed ]] || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Keep apt from starting munge/slurm services (no systemd here, and we run our own
  # private daemons). This image ships a policy-rc.d that denies; add one only if absent.
  made_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\n# temporary, rustray-slurm-emu\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt_install() { apt-get -o DPkg::Lock::Timeout=120 install -y --no-install-recommends "${missing[@]}"; }
  updated=0
  # apt-get update only when needed: a package without an install candidate means stale/empty lists.
  for p in "${missing[@]}"; do
    # (Captured first: with pipefail, `apt-cache | grep -q` fails by SIGPIPE when grep exits early.)
    pol=$(apt-cache policy "$p" 2>/dev/null || true)
    if ! grep -q 'Candidate: [^(]' <<<"$pol"; then
      apt-get -o DPkg::Lock::Timeout=120 update || log "apt-get update failed; trying the install anyway"
      updated=1; break
    fi
  done
  rc=0
  apt_install || rc=$?
  if ((rc != 0 && updated == 0)); then  # e.g. 404s from stale lists: refresh once and retry
    log "apt-get install failed ($rc); running apt-get update and retrying"
    apt-get -o DPkg::Lock::Timeout=120 update && rc=0 && apt_install || rc=$?
  fi
  if ((made_policy)); then rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
  ((rc == 0)) || { err "apt-get install failed (exit $rc)"; exit 1; }
fi
for b in slurmctld slurmd sinfo srun sbatch munged munge ip nsenter unshare runuser flock; do
  command -v "$b" >/dev/null || { err "$b not found after install"; exit 1; }
done

# ---- 2. clean up any leftover state (stale PIDs, dead daemons, old netns) ---------------
log "cleaning up leftovers (emu-down.sh)"
bash "$HERE/emu-down.sh" >/dev/null || { err "emu-down.sh failed while cleaning up"; bash "$HERE/emu-down.sh" >&2 || true; exit 1; }

# Refuse a subnet this machine already uses (another interface or route): we must only
# ever touch our own bridge and namespaces.
if awk -v p="$SUBNET." 'index($4, p) == 1 {f=1} END {exit !f}' <<<"$(ip -4 -o addr show)"; then
  err "subnet $SUBNET.0/24 is already assigned on this machine; set RUSTRAY_EMU_SUBNET"; exit 1
fi
if awk -v p="$SUBNET." 'index($1, p) == 1 {f=1} END {exit !f}' <<<"$(ip -4 route show)"; then
  err "subnet $SUBNET.0/24 is already routed on this machine; set RUSTRAY_EMU_SUBNET"; exit 1
fi

# ---- 3. directories ---------------------------------------------------------------------
S=$STATE
[[ -d $S/log ]] && { rm -rf "$S/log.prev"; mv "$S/log" "$S/log.prev"; }   # keep one previous run
rm -rf "$S/run" "$S/pids" "$S/ctld" "$S/spool" "$S/tmp" "$S/dev" "$S/cluster.env"
mkdir -p "$S/log" "$S/run" "$S/pids" "$S/ctld" "$S/dev" "$S/munge"
chmod 755 "$S" "$S/log" "$S/run"
for i in $(seq 1 "$N"); do
  # Per-node spool (stepd sockets) and TmpFS: the emulated nodes share one filesystem,
  # so anything node-local must have the node name in its path.
  mkdir -p "$S/spool/node$i" "$S/tmp/node$i"
  chmod 1777 "$S/tmp/node$i"
done
# Fake GPUs: gres.conf File= must be a character device, so symlink to /dev/null.
for g in $(seq 0 $((GPUS - 1))); do ln -sfn /dev/null "$S/dev/nvidia$g"; done

# ---- 4. network: bridge + one netns per node (+ one for slurmctld) -----------------------
# nsenter --net= is used to run daemons in a netns, never `ip netns exec`: the latter
# remounts /sys, /sys/fs/cgroup disappears and slurmd refuses to start.
no_ipv6() { # [netns] iface — IPv6 off on our links (no DAD/RA noise, IPv4 only)
  local ns=$1 ifc=$2
  if [[ -n $ns ]]; then
    nsenter --net="/run/netns/$ns" sh -c "echo 1 > /proc/sys/net/ipv6/conf/$ifc/disable_ipv6" 2>/dev/null || true
  else
    [[ -w /proc/sys/net/ipv6/conf/$ifc/disable_ipv6 ]] && echo 1 >"/proc/sys/net/ipv6/conf/$ifc/disable_ipv6" || true
  fi
}
add_ns() { # netns host-veth ip
  local ns=$1 veth=$2 addr=$3
  ip netns add "$ns"
  ip link add "$veth" type veth peer name eth0 netns "$ns"
  no_ipv6 "" "$veth"
  no_ipv6 "$ns" eth0
  no_ipv6 "$ns" all
  ip link set "$veth" master "$BR" up
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "$addr/24" dev eth0
  ip -n "$ns" link set eth0 up
  # Deliberately no default route: nodes can reach only the bridge subnet and their own lo.
}
{
  ip link add "$BR" type bridge
  no_ipv6 "" "$BR"
  ip addr add "$SUBNET.1/24" dev "$BR"
  ip link set "$BR" up
  add_ns "$CTL_NS" "$CTL_VETH" "$SUBNET.2"
  for i in $(seq 1 "$N"); do add_ns "rremu-node$i" "rremu-v$i" "$SUBNET.$((10 + i))"; done
} >"$S/log/network.log" 2>&1 || fail "network setup failed" "$S/log/network.log"

# ---- 5. /etc/hosts: one marked block, rewritten in place ---------------------------------
# In place (cat >), not sed -i / mv: /etc/hosts may be a bind mount whose inode must stay.
hosts_tmp=$(mktemp)
awk -v b="$HOSTS_BEGIN" -v e="$HOSTS_END" '$0==b{skip=1;next} $0==e{skip=0;next} !skip' /etc/hosts >"$hosts_tmp"
{
  echo "$HOSTS_BEGIN"
  echo "$SUBNET.2 slurmctl"
  for i in $(seq 1 "$N"); do echo "$SUBNET.$((10 + i)) node$i"; done
  echo "$HOSTS_END"
} >>"$hosts_tmp"
cat "$hosts_tmp" >/etc/hosts
rm -f "$hosts_tmp"

# ---- 6. slurm.conf / gres.conf -------------------------------------------------------------
mkdir -p /etc/slurm
for f in "$CONF" "$GRES_CONF"; do
  # A pre-existing file that is not ours is moved aside once; emu-down.sh puts it back.
  if [[ -e $f ]] && ! head -n1 "$f" | grep -q "$MARK"; then
    if [[ -e $f.rustray-emu-saved ]]; then
      err "$f is not ours and $f.rustray-emu-saved already exists; refusing to overwrite either"; exit 1
    fi
    mv "$f" "$f.rustray-emu-saved"
    log "moved pre-existing $f to $f.rustray-emu-saved (restored by emu-down.sh)"
  fi
done
{
  echo "# $MARK (slurm/emu-up.sh); removed by slurm/emu-down.sh"
  cat <<EOF
ClusterName=emu
# slurmctld runs in its own UTS ns with hostname slurmctl: the name must match.
SlurmctldHost=slurmctl($SUBNET.2)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
# Our private munged; never touches a system one.
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$S/munge/munge.socket
StateSaveLocation=$S/ctld
SlurmctldPidFile=$S/run/slurmctld.pid
SlurmctldLogFile=$S/log/slurmctld.log
# %n = node name: every slurmd needs its own spool, pid file, log and TmpFS.
SlurmdSpoolDir=$S/spool/%n
SlurmdPidFile=$S/run/slurmd-%n.pid
SlurmdLogFile=$S/log/slurmd-%n.log
TmpFS=$S/tmp/%n
SlurmctldDebug=info
SlurmdDebug=info
# All slurmds share one cgroup tree, so no cgroup-based tracking or confinement.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# cons_tres is needed for --gpus-per-node / --gpus.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Trust the CPUs/RealMemory below instead of draining nodes on a hardware mismatch.
SlurmdParameters=config_overrides
ReturnToService=2
# Schedule batch jobs at submit time (default batch_sched_delay=3 adds ~3 s to every sbatch).
SchedulerParameters=batch_sched_delay=0
MpiDefault=none
# No mail on this machine; silences "Configured MailProg is invalid".
MailProg=/bin/true
GresTypes=gpu
EOF
  gres=""
  ((GPUS > 0)) && gres=" Gres=gpu:$GPUS"
  for i in $(seq 1 "$N"); do
    echo "NodeName=node$i NodeAddr=$SUBNET.$((10 + i)) CPUs=$CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$MEM$gres State=UNKNOWN"
  done
  echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
} >"$CONF"
{
  echo "# $MARK (slurm/emu-up.sh); removed by slurm/emu-down.sh"
  echo "AutoDetect=off"
  if ((GPUS > 0)); then
    if ((GPUS == 1)); then files="$S/dev/nvidia0"; else files="$S/dev/nvidia[0-$((GPUS - 1))]"; fi
    echo "NodeName=node[1-$N] Name=gpu File=$files"
  fi
} >"$GRES_CONF"
chmod 644 "$CONF" "$GRES_CONF"

# ---- 7. munged (private instance) ----------------------------------------------------------
# Daemons get a clean environment and no inherited stdio, so a caller capturing our
# output (e.g. $(emu-up.sh)) never waits on them; and not fd 9 either, or they would hold
# the harness lock for as long as they live.
DENV=(env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C)
if [[ ! -s $S/munge/munge.key ]]; then
  dd if=/dev/urandom of="$S/munge/munge.key" bs=1024 count=1 status=none
fi
chown -R munge:munge "$S/munge"
chmod 755 "$S/munge"   # munged insists clients can traverse the socket dir
chmod 600 "$S/munge/munge.key"
rm -f "$S/munge/munge.socket" "$S/munge/munge.socket.lock" "$S/munge/munged.pid"
touch "$S/log/munged.log"; chown munge:munge "$S/log/munged.log"
"${DENV[@]}" runuser -u munge -- munged \
  --socket="$S/munge/munge.socket" --key-file="$S/munge/munge.key" \
  --pid-file="$S/munge/munged.pid" --log-file="$S/log/munged.log" \
  --seed-file="$S/munge/munged.seed" </dev/null >>"$S/log/daemons.out" 2>&1 9>&- ||
  fail "munged failed to start" "$S/log/munged.log" "$S/log/daemons.out"
pid=$(wait_pidfile "$S/munge/munged.pid" 15) || fail "munged did not come up" "$S/log/munged.log" "$S/log/daemons.out"
record_pid munged "$pid"
munge -n -S "$S/munge/munge.socket" | unmunge -S "$S/munge/munge.socket" >/dev/null 2>&1 ||
  fail "munge credential round-trip failed" "$S/log/munged.log"

# ---- 8. slurmctld in its own netns + UTS ns ------------------------------------------------
"${DENV[@]}" nsenter --net="/run/netns/$CTL_NS" unshare --uts \
  sh -c 'echo slurmctl >/proc/sys/kernel/hostname && exec slurmctld -f "$1"' sh "$CONF" \
  </dev/null >>"$S/log/daemons.out" 2>&1 9>&- || fail "slurmctld failed to start" "$S/log/slurmctld.log" "$S/log/daemons.out"
pid=$(wait_pidfile "$S/run/slurmctld.pid" 20) || fail "slurmctld did not come up" "$S/log/slurmctld.log" "$S/log/daemons.out"
record_pid slurmctld "$pid"

# ---- 9. one slurmd per node, each in its netns + UTS ns (hostname nodeI) --------------------
for i in $(seq 1 "$N"); do
  "${DENV[@]}" nsenter --net="/run/netns/rremu-node$i" unshare --uts \
    sh -c 'echo "$1" >/proc/sys/kernel/hostname && exec slurmd -f "$2"' sh "node$i" "$CONF" \
    </dev/null >>"$S/log/daemons.out" 2>&1 9>&- || fail "slurmd on node$i failed to start" "$S/log/slurmd-node$i.log" "$S/log/daemons.out"
done
for i in $(seq 1 "$N"); do
  pid=$(wait_pidfile "$S/run/slurmd-node$i.pid" 20) ||
    fail "slurmd on node$i did not come up" "$S/log/slurmd-node$i.log" "$S/log/daemons.out"
  record_pid "slurmd-node$i" "$pid"
done

# ---- 10. wait until sinfo shows N idle nodes ---------------------------------------------
end=$((SECONDS + TIMEOUT))
while :; do
  states=$(sinfo_states || true)
  idle=$(awk '$2=="idle"' <<<"$states" | wc -l)
  total=$(awk 'NF' <<<"$states" | wc -l)
  ((idle == N && total == N)) && break
  # A daemon that died will not come back by waiting.
  for f in "$S"/pids/*; do
    read -r pid _ name <"$f"
    alive "$pid" || fail "$name died during startup" "$S/log/$name.log" "$S/log/slurmctld.log"
  done
  if ((SECONDS >= end)); then
    echo "sinfo -N:" >&2; echo "${states:-<no answer>}" >&2
    logs=("$S/log/slurmctld.log")
    while read -r n s; do [[ -n $n && $s != idle ]] && logs+=("$S/log/slurmd-$n.log"); done <<<"$states"
    fail "timed out after ${TIMEOUT}s waiting for $N idle nodes (have $idle idle of $total)" "${logs[@]}"
  fi
  sleep 0.2
done
echo "$WANT" >"$S/cluster.env"
log "up: $N nodes idle (node1..node$N = $SUBNET.11..$SUBNET.$((10 + N)), slurmctl = $SUBNET.2, bridge $BR = $SUBNET.1); state in $S"

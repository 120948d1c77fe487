#!/usr/bin/env bash
# emu-down.sh — tear down what emu-up.sh created, and nothing else.
#
# - stops the daemons emu-up.sh recorded (by PID + start time, so a recycled PID is never hit),
#   then any process still living in one of our network namespaces (job steps, tasks);
# - deletes the rremu-* namespaces, veths and the rremu0 bridge;
# - removes the marked block from /etc/hosts and our slurm.conf/gres.conf, restoring any
#   pre-existing files emu-up.sh moved aside.
# Every wait is bounded. Idempotent: safe to run when nothing (or only part) is up.
# Logs stay in $RUSTRAY_EMU_STATE/log for post-mortems.
set -euo pipefail

STATE=${RUSTRAY_EMU_STATE:-/var/tmp/rustray-slurm-emu}
BR=rremu0
MARK="managed by rustray-slurm-emu"
HOSTS_BEGIN="# BEGIN rustray-slurm-emu"
HOSTS_END="# END rustray-slurm-emu"
export LC_ALL=C

err() { echo "emu-down: ERROR: $*" >&2; }
log() { echo "emu-down: $*"; }
[[ $(id -u) -eq 0 ]] || { err "must run as root"; exit 1; }

# Share emu-up.sh's lock unless emu-up.sh itself is calling us (it already holds it).
if [[ ${RUSTRAY_EMU_LOCKED:-0} != 1 && -d $STATE ]]; then
  exec 9>"$STATE/lock"
  flock -w 120 9 || { err "another emu-up/emu-down holds $STATE/lock"; exit 1; }
fi

# Zombies count as dead: PID 1 here reaps orphans lazily.
proc_field() { # pid -> "state starttime"
  local s
  s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  s=${s##*) }
  local -a f
  read -ra f <<<"$s"
  echo "${f[0]} ${f[19]}"
}
alive() { local st; st=$(proc_field "$1") || return 1; [[ ${st%% *} != Z && ${st%% *} != X ]]; }
# Same process as recorded? (guards against PID reuse)
same() { local st; st=$(proc_field "$1") || return 1; [[ ${st%% *} != Z && ${st#* } == "$2" ]]; }

stop_pids() { # seconds pid... : SIGTERM, bounded wait, then SIGKILL, bounded wait
  local secs=$1; shift
  (($#)) || return 0
  local p left end
  kill -TERM "$@" 2>/dev/null || true
  end=$((SECONDS + secs))
  while :; do
    left=()
    for p in "$@"; do alive "$p" && left+=("$p"); done
    ((${#left[@]})) || return 0
    ((SECONDS >= end)) && break
    sleep 0.1
  done
  log "SIGKILL after ${secs}s: ${left[*]}"
  kill -KILL "${left[@]}" 2>/dev/null || true
  end=$((SECONDS + 5))
  while ((SECONDS < end)); do
    left=()
    for p in "$@"; do alive "$p" && left+=("$p"); done
    ((${#left[@]})) || return 0
    sleep 0.1
  done
  err "still alive after SIGKILL: ${left[*]}"
}

# ---- 1. recorded daemons: slurmds first, then slurmctld, then munged -------------------
stopped=0
for group in 'slurmd-*' slurmctld munged; do
  pids=()
  for f in "$STATE"/pids/$group; do
    [[ -f $f ]] || continue
    read -r pid start name <"$f" || true
    if [[ $pid =~ ^[0-9]+$ ]] && same "$pid" "$start"; then pids+=("$pid"); fi
    rm -f "$f"
  done
  if ((${#pids[@]})); then stop_pids 10 "${pids[@]}"; stopped=$((stopped + ${#pids[@]})); fi
done
# munged is the one daemon outside our namespaces, so step 2 cannot catch it if its record
# was lost: fall back to its own pid file, accepted only if that process is a munged
# serving our private socket.
if [[ -s $STATE/munge/munged.pid ]]; then
  pid=$(tr -dc 0-9 <"$STATE/munge/munged.pid")
  if [[ -n $pid ]] && alive "$pid" && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == munged ]] &&
     grep -qzxF -- "--socket=$STATE/munge/munge.socket" "/proc/$pid/cmdline" 2>/dev/null; then
    stop_pids 10 "$pid"; stopped=$((stopped + 1))
  fi
fi

# ---- 2. anything else still inside our namespaces (slurmstepd, job tasks, a slurmd whose
#         pid record was lost). These namespaces are ours, so everything in them is ours.
ns_list=()
if [[ -d /run/netns ]]; then
  for p in /run/netns/rremu-*; do [[ -e $p ]] && ns_list+=("${p##*/}"); done
fi
if ((${#ns_list[@]})); then
  pids=()
  for ns in "${ns_list[@]}"; do
    while read -r p; do [[ $p =~ ^[0-9]+$ ]] && alive "$p" && pids+=("$p"); done < <(ip netns pids "$ns" 2>/dev/null || true)
  done
  # Short grace: slurmstepd ignores SIGTERM, and these are leftovers anyway.
  if ((${#pids[@]})); then stop_pids 2 "${pids[@]}"; stopped=$((stopped + ${#pids[@]})); fi
fi

# ---- 3. network ---------------------------------------------------------------------------
for ns in "${ns_list[@]}"; do ip netns del "$ns" 2>/dev/null || err "could not delete netns $ns"; done
# Host-side veths (normally gone with their netns) and the bridge.
while read -r ifc; do
  [[ -n $ifc ]] && { ip link del "$ifc" 2>/dev/null || true; }
done < <(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -E '^rremu-v' || true)
if ip link show "$BR" >/dev/null 2>&1; then ip link del "$BR" || err "could not delete bridge $BR"; fi

# ---- 4. /etc/hosts block (rewritten in place: the file may be a bind mount) ----------------
if grep -qx "$HOSTS_BEGIN" /etc/hosts 2>/dev/null; then
  tmp=$(mktemp)
  awk -v b="$HOSTS_BEGIN" -v e="$HOSTS_END" '$0==b{skip=1;next} $0==e{skip=0;next} !skip' /etc/hosts >"$tmp"
  cat "$tmp" >/etc/hosts
  rm -f "$tmp"
fi

# ---- 5. our slurm config; restore what emu-up.sh moved aside -------------------------------
for f in /etc/slurm/slurm.conf /etc/slurm/gres.conf; do
  if [[ -f $f ]] && head -n1 "$f" | grep -q "$MARK"; then rm -f "$f"; fi
  if [[ -e $f.rustray-emu-saved && ! -e $f ]]; then
    mv "$f.rustray-emu-saved" "$f"
    log "restored $f"
  fi
done

# ---- 6. runtime state (keep logs, munge key and ctld state dir for post-mortems) ---------
if [[ -d $STATE ]]; then
  rm -rf "$STATE/run" "$STATE/pids" "$STATE/cluster.env" "$STATE/munge/munge.socket" \
    "$STATE/munge/munge.socket.lock" "$STATE/munge/munged.pid"
fi
log "down (stopped $stopped processes, removed ${#ns_list[@]} namespaces)"

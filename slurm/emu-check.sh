#!/usr/bin/env bash
# emu-check.sh — smoke test of the emulated cluster brought up by emu-up.sh (needs >= 2 nodes).
#
# Prints one "PASS ..." / "FAIL ..." (or "SKIP ...") line per check, then exactly
# "<passed> passed, <failed> failed", and exits non-zero if anything failed.
# Every Slurm command is bounded with timeout(1); jobs are awaited with a bounded squeue loop.
# Node names are never assumed (node1/node2): back-to-back jobs may land on any nodes.
set -euo pipefail

STATE=${RUSTRAY_EMU_STATE:-/var/tmp/rustray-slurm-emu}
export LC_ALL=C
# The system python (tasks inherit our environment; a pyenv shim would also do, but slower).
PY=/usr/bin/python3
[[ -x $PY ]] || PY=$(command -v python3 || echo python3)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/rustray-emu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

passed=0 failed=0
pass() { echo "PASS $*"; passed=$((passed + 1)); }
fail() { # message [file-with-details]
  echo "FAIL $1"
  if [[ -n ${2:-} && -s $2 ]]; then sed 's/^/    | /' "$2" | tail -n 20; fi
  failed=$((failed + 1))
}
finish() { echo "$passed passed, $failed failed"; exit $((failed > 0)); }

# ---- 1. sinfo: >= 2 nodes, all idle -------------------------------------------------------
if ! timeout 20 sinfo -h -N -o '%N %T %G' >"$WORK/sinfo" 2>&1; then
  fail "sinfo does not answer (is the cluster up? run slurm/emu-up.sh N)" "$WORK/sinfo"
  finish
fi
nodes=$(awk 'NF' "$WORK/sinfo" | wc -l)
idle=$(awk '$2=="idle"' "$WORK/sinfo" | wc -l)
if ((nodes >= 2 && idle == nodes)); then
  pass "sinfo: $nodes nodes, all idle ($(awk '{printf "%s%s", (NR>1?",":""), $1}' "$WORK/sinfo"))"
else
  fail "sinfo: need >= 2 nodes all idle, have $idle idle of $nodes" "$WORK/sinfo"
  ((nodes >= 2)) || finish
fi
# Fake GPUs per node, from the Gres column ("gpu:2" or "gpu:2(S:0)"); 0 if none.
gpus=$(awk 'NR==1{ if (match($3, /gpu:[0-9]+/)) print substr($3, RSTART+4, RLENGTH-4); else print 0 }' "$WORK/sinfo")

# ---- 2. srun -N2 hostname: two different node names -------------------------------------
if timeout 60 srun -N2 --ntasks-per-node=1 hostname >"$WORK/srun.out" 2>"$WORK/srun.err"; then
  mapfile -t hosts <"$WORK/srun.out"
  if ((${#hosts[@]} == 2)) && [[ ${hosts[0]} != "${hosts[1]}" ]] &&
     grep -qx "${hosts[0]} .*" "$WORK/sinfo" && grep -qx "${hosts[1]} .*" "$WORK/sinfo"; then
    pass "srun -N2 hostname: ${hosts[*]}"
  else
    fail "srun -N2 hostname: expected 2 different node names, got: $(tr '\n' ' ' <"$WORK/srun.out")" "$WORK/srun.err"
  fi
else
  fail "srun -N2 hostname exited non-zero/timed out" "$WORK/srun.err"
fi

# ---- 3. sbatch -N2 --wrap: job completes, ran on 2 nodes -----------------------------------
jid=$(timeout 30 sbatch --parsable -N2 -o "$WORK/batch-%j.out" -e "$WORK/batch-%j.out" \
  --wrap 'srun --ntasks-per-node=1 hostname' 2>"$WORK/sbatch.err" | cut -d';' -f1) || true
if [[ ! $jid =~ ^[0-9]+$ ]]; then
  fail "sbatch -N2 --wrap: submission failed" "$WORK/sbatch.err"
else
  t0=$SECONDS end=$((SECONDS + 60))
  # squeue lists the job while pending/running/completing; empty (or an error once the job
  # is purged) means it is finished.
  while ((SECONDS < end)); do
    q=$(timeout 10 squeue -h -j "$jid" -o %T 2>/dev/null || true)
    [[ -z $q ]] && break
    sleep 0.3
  done
  info=$(timeout 10 scontrol show job "$jid" 2>&1 || true)
  state=$(grep -o 'JobState=[A-Z_]*' <<<"$info" | cut -d= -f2 || true)
  ec=$(grep -o ' ExitCode=[0-9:]*' <<<"$info" | head -n1 | cut -d= -f2 || true)
  out="$WORK/batch-$jid.out"
  nhosts=$(sort -u "$out" 2>/dev/null | awk 'NF' | wc -l)
  if [[ $state == COMPLETED && $ec == 0:0 && $nhosts == 2 ]]; then
    pass "sbatch -N2 --wrap: job $jid COMPLETED in $((SECONDS - t0))s on $(sort -u "$out" | tr '\n' ' ')"
  else
    echo "$info" >"$WORK/sbatch.info"; cat "$out" >>"$WORK/sbatch.info" 2>/dev/null || true
    fail "sbatch -N2 --wrap: job $jid state=${state:-?} exit=${ec:-?} distinct hosts=$nhosts (after $((SECONDS - t0))s)" "$WORK/sbatch.info"
    timeout 10 scancel "$jid" 2>/dev/null || true
  fi
fi

# ---- 4. cross-node TCP: task on the 2nd node listens, task on the 1st connects by name ------
cat >"$WORK/tcp.py" <<'EOF'
import os, socket, subprocess, sys, time
port = 45555
nodes = subprocess.run(["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]],
                       capture_output=True, text=True, check=True).stdout.split()
me = socket.gethostname()
if os.environ["SLURM_NODEID"] == "1":          # server
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(1); s.settimeout(20)
    c, peer = s.accept(); c.settimeout(10)
    msg = c.recv(100).decode()
    c.sendall(f"{me} got '{msg}' from {peer[0]}".encode()); c.close()
    print(f"server {me} saw peer {peer[0]}")
else:                                          # client: retry until the server listens
    target = nodes[1]; deadline = time.time() + 20
    while True:
        try:
            c = socket.create_connection((target, port), timeout=3); break
        except OSError:
            if time.time() > deadline: raise
            time.sleep(0.2)
    c.settimeout(10); c.sendall(f"hello from {me}".encode())
    print(f"client {me} -> {target}: {c.recv(200).decode()}")
EOF
if timeout 60 srun -N2 --ntasks-per-node=1 "$PY" "$WORK/tcp.py" >"$WORK/tcp.out" 2>"$WORK/tcp.err"; then
  srv=$(grep '^server ' "$WORK/tcp.out" || true)
  cli=$(grep '^client ' "$WORK/tcp.out" || true)
  srv_host=$(awk '{print $2}' <<<"$srv"); cli_host=$(awk '{print $2}' <<<"$cli")
  if [[ -n $srv && -n $cli && $srv_host != "$cli_host" && $cli == *"got 'hello from $cli_host'"* ]]; then
    pass "cross-node TCP: $cli"
  else
    cat "$WORK/tcp.out" "$WORK/tcp.err" >"$WORK/tcp.all"
    fail "cross-node TCP: unexpected output" "$WORK/tcp.all"
  fi
else
  cat "$WORK/tcp.out" "$WORK/tcp.err" >"$WORK/tcp.all"
  fail "cross-node TCP: srun failed/timed out" "$WORK/tcp.all"
fi

# ---- 5. fake GPUs: --gpus-per-node=2 -> CUDA_VISIBLE_DEVICES=0,1, SLURM_GPUS_ON_NODE=2 --------
if ((gpus < 2)); then
  echo "SKIP fake GPUs: nodes have $gpus GPU(s) (RUSTRAY_EMU_GPUS < 2)"
elif timeout 60 srun -N2 --ntasks-per-node=1 --gpus-per-node=2 \
    sh -c 'echo "$(hostname) CVD=${CUDA_VISIBLE_DEVICES:-unset} GON=${SLURM_GPUS_ON_NODE:-unset}"' \
    >"$WORK/gpu.out" 2>"$WORK/gpu.err"; then
  good=$(grep -c ' CVD=0,1 GON=2$' "$WORK/gpu.out" || true)
  distinct=$(awk '{print $1}' "$WORK/gpu.out" | sort -u | wc -l)
  if [[ $good == 2 && $distinct == 2 ]]; then
    pass "fake GPUs: $(tr '\n' ';' <"$WORK/gpu.out")"
  else
    cat "$WORK/gpu.out" "$WORK/gpu.err" >"$WORK/gpu.all"
    fail "fake GPUs: expected CUDA_VISIBLE_DEVICES=0,1 and SLURM_GPUS_ON_NODE=2 on 2 nodes" "$WORK/gpu.all"
  fi
else
  cat "$WORK/gpu.out" "$WORK/gpu.err" >"$WORK/gpu.all"
  fail "fake GPUs: srun --gpus-per-node=2 failed/timed out" "$WORK/gpu.all"
fi

finish

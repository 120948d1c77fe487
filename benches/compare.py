#!/usr/bin/env python3
"""Compare a rustray microbench run with a Ray bench.py run.

Usage:
    python3 benches/compare.py RUSTRAY.jsonl RAY.jsonl

Both files hold one JSON object per line ({"scenario", "unit", "value", ...});
other lines (logs, blank lines) are skipped, and where a scenario appears
more than once the last line wins.  Prints a markdown table:

    scenario | unit | rustray | Ray | ratio | target | met

ratio = rustray value / Ray value.  Targets (from the issue):
  * sync latencies, wait_1000_ms: <= 1/20 of Ray
  * task/actor throughputs, put/get_small: >= 20x Ray
  * put_large_gb_per_s: >= Ray and >= 0.8 x memcpy_gb_per_s (rustray's line)
  * put_large_cold_gb_per_s (the first large put of a fresh store):
    >= 0.5 x memcpy_gb_per_s (the performance issue);
    put_large_cold_4k_gb_per_s (the same into a plain /dev/shm store, where
    user namespaces are off) and shm_first_touch_gb_per_s (its floor) have
    no target
  * task_large_arg_gb_per_s: >= Ray
  * cluster_start_s: < 0.2 s absolute
  * idle_rss_mb: <= 1/10 of Ray
  * internode_transfer_gb_per_s (--multinode): >= 0.9 x tcp_copy_gb_per_s
    (rustray's own plain loopback TCP copy of the same bytes, same run; taken
    from its row, else from internode's extra); Ray's value, when its jsonl
    has the row (bench.py --multinode), is shown for the ratio
  * internode_transfer_slurm_gb_per_s (--multinode, on 2 Slurm nodes):
    >= 0.9 x tcp_copy_slurm_gb_per_s (a plain TCP copy of the same bytes
    between the same two nodes, same run; from its row, else from the
    transfer's extra)
Rows only rustray has (tcp_copy_gb_per_s, cluster_start_3node_s,
spill_throughput_per_s, cluster_start_slurm_3node_s, tcp_copy_slurm_gb_per_s,
internode_transfer_slurm_gb_per_s) show "-" for Ray.
The machine's floor (the performance issue): task_sync_latency_us at most
2.5x and actor_call_sync_latency_us at most 1.5x uds_roundtrip_us (a bare
Unix-socket round trip between two processes, same run), printed after
the table.
Scenarios without a target show "-"; a target that cannot be judged because
a value is missing shows "n/a".  Python 3 standard library only.
"""

import json
import math
import sys

ORDER = [
    "cluster_start_s",
    "idle_rss_mb",
    "uds_roundtrip_us",
    "task_sync_latency_us",
    "task_async_throughput_per_s",
    "task_chain_per_s",
    "nested_tasks_per_s",
    "actor_call_sync_latency_us",
    "actor_call_async_throughput_per_s",
    "actor_many_per_s",
    "put_small_per_s",
    "get_small_per_s",
    "memcpy_gb_per_s",
    "put_large_gb_per_s",
    "put_large_cold_gb_per_s",
    "shm_first_touch_gb_per_s",
    "put_large_cold_4k_gb_per_s",
    "get_large_gb_per_s",
    "task_large_arg_gb_per_s",
    "wait_1000_ms",
    "wait_1000_ready_ms",
    "metg_us",
    "cluster_start_3node_s",
    "tcp_copy_gb_per_s",
    "internode_transfer_gb_per_s",
    "spill_throughput_per_s",
    "metg_3node_us",
    "cluster_start_slurm_3node_s",
    "tcp_copy_slurm_gb_per_s",
    "internode_transfer_slurm_gb_per_s",
]

# Transfer rows judged against a reference row of the same rustray run.
VS_TCP = {
    "internode_transfer_gb_per_s": "tcp_copy_gb_per_s",
    "internode_transfer_slurm_gb_per_s": "tcp_copy_slurm_gb_per_s",
}

# Sync latencies against the bare Unix-socket round trip of the same run.
VS_FLOOR = {"task_sync_latency_us": 2.5, "actor_call_sync_latency_us": 1.5}

LOWER_20 = {"task_sync_latency_us", "actor_call_sync_latency_us", "wait_1000_ms"}
HIGHER_20 = {
    "task_async_throughput_per_s",
    "task_chain_per_s",
    "nested_tasks_per_s",
    "actor_call_async_throughput_per_s",
    "put_small_per_s",
    "get_small_per_s",
}


def key(rec):
    """A row's name in the table: its scenario, or for the data-plane rows
    (one per transport and size, and the raw fi_read ceiling) the scenario
    with its transport and size, so they do not overwrite bench.py's row."""
    extra = rec.get("extra") if isinstance(rec.get("extra"), dict) else {}
    n = rec.get("n")
    size = f"{n / 2**20:g} MiB" if isinstance(n, (int, float)) else "?"
    if "transport" in extra and "provider" in extra:
        where = ", slurm" if extra.get("slurm") else ""
        return f"{rec['scenario']} [{extra['transport']}, {size}{where}]"
    if "simulated_nodes" in extra:
        return f"{rec['scenario']} [{extra['simulated_nodes']} nodes]"
    if rec["scenario"] == "raw_fi_read_gb_per_s":
        where = ", slurm" if extra.get("slurm") else ""
        return f"{rec['scenario']} [{extra.get('provider', '?')}, {size}{where}]"
    return rec["scenario"]


def load(path):
    """scenario -> record (last one wins); non-JSON lines are ignored."""
    out = {}
    try:
        f = open(path, encoding="utf-8", errors="replace")
    except OSError as e:
        print(f"warning: cannot read {path}: {e}", file=sys.stderr)
        return out
    with f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("scenario"), str):
                out[key(rec)] = rec
    return out


def num(rec):
    if rec is None:
        return None
    v = rec.get("value")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def fmt(v):
    if v is None:
        return "-"
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1e6 or a < 1e-3:
        return f"{v:.3g}"
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}" if a < 1 else f"{v:.2f}"


def fmt_ratio(r):
    if r is None:
        return "-"
    if r == 0:
        return "0x"
    if abs(r) >= 100 or abs(r) < 1:
        return f"{r:.3g}x"
    return f"{r:.2f}x"


def judge(name, rv, yv, rust):
    """(target text, met) with met in {True, False, None (n/a), "" (no target)}."""
    if name in LOWER_20:
        if rv is None or yv is None:
            return "<= 0.05x Ray", None
        return "<= 0.05x Ray", rv <= yv / 20.0
    if name in HIGHER_20:
        if rv is None or yv is None:
            return ">= 20x Ray", None
        return ">= 20x Ray", rv >= 20.0 * yv
    if name == "put_large_gb_per_s":
        text = ">= Ray and >= 0.8x memcpy"
        mc = num(rust.get("memcpy_gb_per_s"))
        if mc is None:  # fall back to the value carried in put_large's extra
            ex = (rust.get(name) or {}).get("extra") or {}
            m = ex.get("memcpy_gb_per_s")
            mc = float(m) if isinstance(m, (int, float)) else None
        if rv is None or yv is None or mc is None:
            return text, None
        return f"{text} ({fmt(0.8 * mc)})", rv >= yv and rv >= 0.8 * mc
    if name == "put_large_cold_gb_per_s":
        text = ">= 0.5x memcpy"
        mc = num(rust.get("memcpy_gb_per_s"))
        if rv is None or mc is None:
            return text, None
        return f"{text} ({fmt(0.5 * mc)})", rv >= 0.5 * mc
    if name == "task_large_arg_gb_per_s":
        if rv is None or yv is None:
            return ">= Ray", None
        return ">= Ray", rv >= yv
    if name == "cluster_start_s":
        if rv is None:
            return "< 0.2 s", None
        return "< 0.2 s", rv < 0.2
    if name in VS_TCP:
        text = ">= 0.9x tcp copy"
        tc = num(rust.get(VS_TCP[name]))
        if tc is None:  # fall back to the value carried in internode's extra
            ex = (rust.get(name) or {}).get("extra") or {}
            t = ex.get("tcp_copy_gb_per_s")
            tc = float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else None
        if rv is None or tc is None:
            return text, None
        return f"{text} ({fmt(0.9 * tc)})", rv >= 0.9 * tc
    # The control plane on simulated nodes (benches/scale.rs, issue 13).
    scale = {
        "cluster_register_1024_s [1024 nodes]": ("< 2 s", 2.0),
        "node_death_propagation_ms [1024 nodes]": ("< 5100 ms (health bound + 100 ms)", 5100.0),
        "gcs_report_cpu_pct [4096 nodes]": ("< 50% of a core", 50.0),
        "gcs_bytes_out_mb_per_s [4096 nodes]": ("< 50 MB/s", 50.0),
    }
    if name in scale:
        text, most = scale[name]
        return text, None if rv is None else rv < most
    if name == "idle_rss_mb":
        if rv is None or yv is None:
            return "<= 0.1x Ray", None
        return "<= 0.1x Ray", rv <= yv / 10.0
    return "-", ""


def main(argv):
    if len(argv) != 3 or argv[1] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    rust, ray = load(argv[1]), load(argv[2])
    names = [s for s in ORDER if s in rust or s in ray]
    names += sorted((set(rust) | set(ray)) - set(ORDER))
    rust_impl = next((r.get("impl") for r in rust.values() if r.get("impl")), "rustray")
    ray_impl = next((r.get("impl") for r in ray.values() if r.get("impl")), "Ray")
    print(f"| scenario | unit | {rust_impl} | {ray_impl} | ratio | target | met |")
    print("|---|---|---:|---:|---:|---|---|")
    met_n = missed_n = 0
    for name in names:
        r, y = rust.get(name), ray.get(name)
        rv, yv = num(r), num(y)
        unit = (r or y or {}).get("unit", "")
        ratio = rv / yv if rv is not None and yv not in (None, 0.0) else None
        target, met = judge(name, rv, yv, rust)
        if met is True:
            mark, met_n = "met", met_n + 1
        elif met is False:
            mark, missed_n = "**missed**", missed_n + 1
        elif met is None:
            mark = "n/a"
        else:
            mark = ""
        print(f"| {name} | {unit} | {fmt(rv)} | {fmt(yv)} | {fmt_ratio(ratio)} "
              f"| {target} | {mark} |")
    print()
    print(f"targets met: {met_n}, missed: {missed_n}")
    floor = num(rust.get("uds_roundtrip_us"))
    if floor:
        for name, most in VS_FLOOR.items():
            v = num(rust.get(name))
            if v is not None:
                x = v / floor
                verdict = "met" if x <= most else "missed"
                print(f"floor: {name} = {fmt(v)} us = {x:.2f}x uds_roundtrip_us "
                      f"({fmt(floor)} us; target <= {most}x): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

# rustray: the two commands that set everything up on a fresh machine.
#   make run   builds, then runs the quickstart on an embedded local cluster
#   make test  installs what the tests need, then runs every test
CARGO ?= cargo
RAY_VENV ?= .venv-ray

.PHONY: run test deps fuzz chaos build bench bench-ray bench-compare scale clean

run:
	$(CARGO) run --release --example quickstart

# The Rust toolchain must be there; the emulated Slurm cluster's Debian
# packages (slurmctld, slurmd, munge, ...) are installed by slurm/emu-up.sh,
# libfabric and MPI (for the `mpi` feature) by slurm/install-test-deps.sh.
deps:
	@command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup)"; exit 1; }
	@cargo clippy --version >/dev/null 2>&1 || rustup component add clippy 2>/dev/null || apt-get install -y -qq rust-clippy
	bash slurm/install-test-deps.sh

# make test builds and tests with the MPI bootstrap (--bootstrap mpi,
# init_with_mpi, examples/insitu_mpi) and the CUDA layer (rustray::cuda,
# loaded at run time: no toolkit or driver needed); make run and a plain
# cargo build need neither.
TEST_FEATURES ?= --features rustray/mpi,rustray/cuda,rust-ray-launch/mpi

# Lints (clippy, warnings as errors) and the API docs (no broken links)
# first; then every test, including the multi-node ones on a 3-node emulated Slurm
# cluster (network and UTS namespaces on this machine, root needed), which
# is brought up first and torn down after, pass or fail.
test: deps
	@date +%s > target/.test-start 2>/dev/null || { mkdir -p target && date +%s > target/.test-start; }
	$(CARGO) build --release --workspace --bins $(TEST_FEATURES)
	$(CARGO) clippy --release --workspace --all-targets $(TEST_FEATURES) -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps -p rustray --features cuda
	bash slurm/emu-up.sh 3
	status=0; $(CARGO) test --workspace --release --no-fail-fast $(TEST_FEATURES) || status=$$?; \
	bash slurm/emu-down.sh; \
	echo "make test took $$(( $$(date +%s) - $$(cat target/.test-start) )) s"; exit $$status

# Fuzzes every decoder of outside bytes (frames, messages, object blobs,
# resource sets, session strings, the Slurm environment) with ten million
# mutated inputs each: no panic, no allocation past the bound. make test runs
# 200,000 each. FUZZ_INPUTS=N for another count; RUSTRAY_FUZZ_SEED replays.
FUZZ_INPUTS ?= 10000000
fuzz:
	RUSTRAY_FUZZ_INPUTS=$(FUZZ_INPUTS) $(CARGO) test --release --lib --features rustray/mpi fuzz_decoders -- --nocapture

# The chaos suite (tests/chaos.rs) for longer than make test's 8 s: random
# SIGKILLs of workers, actors and a raylet under a workload on 3 local nodes.
CHAOS_SECONDS ?= 120
chaos:
	CHAOS_SECONDS=$(CHAOS_SECONDS) $(CARGO) test --release --workspace $(TEST_FEATURES) --test chaos

build:
	$(CARGO) build --release --workspace --all-targets

# One JSON line per scenario, as ../shared/peers/ray/bench.py prints them.
# --multinode adds, after the single-node run, the multi-node rows on a local
# 3-node cluster (internode transfer + its TCP reference, 3-node start,
# spill), and the Slurm rows (cluster_start_slurm_3node_s and others) on the
# Slurm sinfo answers, else on the emulated one (below). It needs rust-ray-launch next to the bench binary,
# hence the build. BENCH_ARGS=--quick for a smoke run; set BENCH_MULTINODE=
# (empty) to leave the multi-node rows out. The bench's exit status is kept
# (pipefail) while tee writes the jsonl. Then the GPU rows (benches/gpu.rs),
# only where a CUDA driver and a device are.
BENCH_MULTINODE ?= --multinode
BENCH_OUT ?= target/bench-rustray.jsonl
RAY_BENCH_OUT ?= target/bench-ray.jsonl
bench bench-ray: SHELL := /bin/bash

# The launcher gets the MPI bootstrap where an MPI library is installed
# (for cluster_start_slurm_3node_mpi_s).
BENCH_LAUNCH_FEATURES ?= $(if $(shell command -v mpicc),--features mpi)
# Where no Slurm answers, the Slurm rows run on the emulated cluster, brought
# up for the run and taken down after (make test takes it down at its end).
bench:
	$(CARGO) build --release -p rust-ray-launch $(BENCH_LAUNCH_FEATURES)
	@mkdir -p $(dir $(BENCH_OUT))
	@rm -f target/.bench-emu; if [ -n "$(BENCH_MULTINODE)" ] && ! sinfo >/dev/null 2>&1; then \
	  if bash slurm/emu-up.sh 3 >target/bench-emu.log 2>&1; then touch target/.bench-emu; \
	  else echo "make bench: no Slurm, and the emulated one did not start (target/bench-emu.log): the Slurm rows are skipped"; fi; fi
	set -o pipefail; $(CARGO) bench --bench microbench -- $(BENCH_ARGS) $(BENCH_MULTINODE) | tee $(BENCH_OUT); \
	  status=$$?; if [ -f target/.bench-emu ]; then bash slurm/emu-down.sh >/dev/null 2>&1; rm -f target/.bench-emu; fi; exit $$status
	set -o pipefail; $(CARGO) bench --bench scale | tee -a $(BENCH_OUT)
	set -o pipefail; $(CARGO) bench --bench gpu --features rustray/cuda | tee -a $(BENCH_OUT)

# The control plane at 256, 1,024 and 4,096 simulated nodes (benches/scale.rs).
scale:
	$(CARGO) bench --bench scale -- --large

# Ray 2.60 in a venv, same scenarios, same machine. bench.py --multinode runs
# the single-node scenarios and then internode_transfer_gb_per_s in one go.
bench-ray:
	test -x $(RAY_VENV)/bin/python || VENV=$(RAY_VENV) bash ../shared/peers/ray/setup.sh
	@mkdir -p $(dir $(RAY_BENCH_OUT))
	set -o pipefail; $(RAY_VENV)/bin/python ../shared/peers/ray/bench.py $(BENCH_ARGS) $(BENCH_MULTINODE) | tee $(RAY_BENCH_OUT)

bench-compare:
	python3 benches/compare.py target/bench-rustray.jsonl target/bench-ray.jsonl

clean:
	$(CARGO) clean

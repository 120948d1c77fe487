# rustray: the two commands that set everything up on a fresh machine.
#   make run   builds, then runs the quickstart on an embedded local cluster
#   make test  installs what the tests need, then runs every test
CARGO ?= cargo
RAY_VENV ?= .venv-ray

.PHONY: run test deps build bench bench-ray bench-compare clean

run:
	$(CARGO) run --release --example quickstart

# The Rust toolchain must be there; the emulated Slurm cluster's Debian
# packages (slurmctld, slurmd, munge, ...) are installed by slurm/emu-up.sh.
deps:
	@command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup)"; exit 1; }

# Every test, including the multi-node ones on a 3-node emulated Slurm
# cluster (network and UTS namespaces on this machine, root needed), which
# is brought up first and torn down after, pass or fail.
test: deps
	$(CARGO) build --release --workspace --bins
	bash slurm/emu-up.sh 3
	status=0; $(CARGO) test --workspace --release || status=$$?; \
	bash slurm/emu-down.sh; exit $$status

build:
	$(CARGO) build --release --workspace --all-targets

# One JSON line per scenario, as ../shared/peers/ray/bench.py prints them.
bench:
	$(CARGO) bench --bench microbench -- $(BENCH_ARGS) | tee target/bench-rustray.jsonl

# Ray 2.60 in a venv, same scenarios, same machine.
bench-ray:
	test -x $(RAY_VENV)/bin/python || VENV=$(RAY_VENV) bash ../shared/peers/ray/setup.sh
	$(RAY_VENV)/bin/python ../shared/peers/ray/bench.py $(BENCH_ARGS) | tee target/bench-ray.jsonl

bench-compare:
	python3 benches/compare.py target/bench-rustray.jsonl target/bench-ray.jsonl

clean:
	$(CARGO) clean

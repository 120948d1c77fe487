# rustray: the two commands that set everything up on a fresh machine.
#   make run   builds, then runs the quickstart on an embedded local cluster
#   make test  installs what the tests need, then runs every test
CARGO ?= cargo
RAY_VENV ?= .venv-ray

.PHONY: run test deps build bench bench-ray bench-compare clean

run:
	$(CARGO) run --release --example quickstart

# Nothing beyond the Rust toolchain is needed yet; later issues (MPI,
# libfabric, Slurm) add their Debian packages here.
deps:
	@command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup)"; exit 1; }

test: deps
	$(CARGO) test --workspace --release

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

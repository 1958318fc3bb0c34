# Two commands on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip

.PHONY: demo test bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# One stamp per extra: reinstall when pyproject.toml changes.
$(VENV)/.installed-%: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e '.[$*]'
	touch $@

demo: $(VENV)/.installed-demo
	$(BIN)/rtcap demo

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest

bench: $(VENV)/.installed-bench
	$(MAKE) -C bench all PYTHON=$(abspath $(BIN)/python)

lint: $(VENV)/.installed-lint
	$(BIN)/ruff check recorder analyzer tests bench
	$(BIN)/ruff format --check recorder analyzer tests bench

clean:
	rm -rf $(VENV) .venv-mitmproxy .pytest_cache

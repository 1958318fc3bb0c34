# Two commands on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip

.PHONY: demo test bench lint clean screenshot

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# One stamp per extra: reinstall when pyproject.toml changes.
$(VENV)/.installed-%: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e '.[$*]'
	touch $@

demo: $(VENV)/.installed-demo
	$(BIN)/rtcap demo

# The shim is tested against the oldest and the newest websockets it supports, each
# installed on its own, to be put first on PYTHONPATH of an app run under the shim.
WEBSOCKETS_OLDEST := 13.0
WEBSOCKETS_NEWEST := <18

$(VENV)/websockets-%/.installed: | $(BIN)/python
	rm -rf $(dir $@)
	$(PIP) install --quiet --no-deps --target $(dir $@) 'websockets$(if $(filter oldest,$*),==$(WEBSOCKETS_OLDEST),$(WEBSOCKETS_NEWEST))'
	touch $@

# Likewise aiohttp (with its dependencies): the oldest and newest the shim supports.
AIOHTTP_OLDEST := 3.9.0
AIOHTTP_NEWEST := <4

$(VENV)/aiohttp-%/.installed: | $(BIN)/python
	rm -rf $(dir $@)
	$(PIP) install --quiet --target $(dir $@) 'aiohttp$(if $(filter oldest,$*),==$(AIOHTTP_OLDEST),$(AIOHTTP_NEWEST))'
	touch $@

# A client the shim does not record, for the test that `rtcap run` says so.
$(VENV)/websocket-client/.installed: | $(BIN)/python
	rm -rf $(dir $@)
	$(PIP) install --quiet --no-deps --target $(dir $@) 'websocket-client>=1.6,<2'
	touch $@

# The voice-agent frameworks, each in a venv of its own (with msgpack, which the shim needs in
# the interpreter it lands in): the tests run their realtime clients under `rtcap run`.
FRAMEWORK_livekit := 'livekit-plugins-openai>=1.8,<2'
FRAMEWORK_pipecat := 'pipecat-ai[openai]>=1.14,<2'

.venv-%/.installed:
	rm -rf .venv-$*
	$(PYTHON) -m venv .venv-$*
	.venv-$*/bin/python -m pip install --quiet --upgrade pip
	.venv-$*/bin/python -m pip install --quiet $(FRAMEWORK_$*) 'msgpack>=1.0,<2'
	touch $@

# The Node clients the proxy is tested with, as tests/node/package-lock.json pins them.
tests/node/node_modules/.installed: tests/node/package.json tests/node/package-lock.json
	cd tests/node && npm ci --no-audit --no-fund --silent
	touch $@

test: $(VENV)/.installed-test $(VENV)/websockets-oldest/.installed $(VENV)/websockets-newest/.installed \
		$(VENV)/aiohttp-oldest/.installed $(VENV)/aiohttp-newest/.installed $(VENV)/websocket-client/.installed \
		.venv-livekit/.installed .venv-pipecat/.installed tests/node/node_modules/.installed
	# Two workers for the two cores, a test file to each (its module fixtures stay whole).
	# Bytecode is cached even where PYTHONDONTWRITEBYTECODE is set (this machine's kind sets
	# it): otherwise each worker and each rtcap the tests start compiles rtcap's modules anew.
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder

# mitmproxy 11.0.2 (the last release for Python 3.11) in its own venv: the benchmark's slow baseline.
PYTHON311 := $(shell command -v python3.11 || command -v python3)
MITM_VENV := .venv-mitmproxy

$(MITM_VENV)/bin/mitmdump:
	$(PYTHON311) -m venv $(MITM_VENV)
	$(MITM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MITM_VENV)/bin/python -m pip install --quiet mitmproxy==11.0.2
	$@ --version

bench: $(VENV)/.installed-bench $(MITM_VENV)/bin/mitmdump $(VENV)/aiohttp-newest/.installed
	$(BIN)/python bench/proxy_bench.py
	$(BIN)/python bench/soak_bench.py
	$(BIN)/python bench/shim_bench.py
	$(BIN)/python bench/index_bench.py
	$(BIN)/python bench/precursors_bench.py
	$(BIN)/python bench/ui_bench.py
	$(BIN)/python bench/scale_bench.py

# README's screenshot: the demo's failed session page, in Debian's chromium.
screenshot: $(VENV)/.installed-test
	$(BIN)/python docs/make_screenshot.py docs/session-page.png

lint: $(VENV)/.installed-lint
	$(BIN)/ruff check recorder analyzer tests bench
	$(BIN)/ruff format --check recorder analyzer tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .venv-mitmproxy .venv-livekit .venv-pipecat .pytest_cache

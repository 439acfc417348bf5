# The two commands of the README: `make run` and `make test`. Each does its own set-up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint typecheck pytest browser fuzz conformance conformance-full clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,loadtest,baseline]'
	touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(BIN)/triorelay serve --host $(HOST) --port $(PORT)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests loadtest tools
	$(BIN)/ruff format --check src tests loadtest tools

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy src loadtest

# The browser tests (tests/browser/) drive Debian's Chromium through its chromedriver (never a
# browser download: selenium is told where both are). Installed here only when one is missing;
# apt-get runs as root, as on CI and the developers' machines. The package lists are refreshed
# only when the install cannot find the packages (a fresh machine has none).
CHROMIUM ?= /usr/bin/chromium
CHROMEDRIVER ?= /usr/bin/chromedriver
CHROMIUM_PACKAGES := chromium chromium-driver
browser:
	@if [ ! -x $(CHROMIUM) ] || [ ! -x $(CHROMEDRIVER) ]; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y --no-install-recommends $(CHROMIUM_PACKAGES) \
	  || { apt-get update && apt-get install -y --no-install-recommends $(CHROMIUM_PACKAGES); }; \
	fi

pytest: $(VENV)/.installed-test browser
	rm -f .coverage
	$(BIN)/coverage run -m pytest
	$(BIN)/coverage report

test: lint typecheck pytest

# Hypothesis byte streams over raw TCP against a relay process: 10,000 examples (make test: 300).
fuzz: $(VENV)/.installed-test
	TRIORELAY_FUZZ_EXAMPLES=10000 $(BIN)/python -m pytest tests/test_fuzz.py -s -p no:cacheprovider --timeout 7200

# Autobahn|Testsuite against /ws/echo (Python 2.7 from $$PYTHON2 or pyenv); report in build/autobahn.
# Sections 1-7, 9, 10 and 72 of the 216 compression cases (12, 13): ~4 min; -full: all, ~23 min.
conformance: $(VENV)/.installed-run
	$(BIN)/python tools/conformance.py

conformance-full: $(VENV)/.installed-run
	$(BIN)/python tools/conformance.py --full

clean:
	rm -rf $(VENV) .coverage .coverage.* .mypy_cache .pytest_cache .ruff_cache build

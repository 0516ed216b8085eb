# Chorus: `make serve` and `make test` work on a machine that has never seen the project.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CHORUS := $(VENV)/bin/chorus
STAMP := $(VENV)/.chorus-installed
PYTEST_ARGS ?=
# two pytest-xdist workers, a test file's tests on one of them (module fixtures such as the Ray
# cluster are built once), the files in tests/conftest.py's FILE_ORDER; PYTEST_XDIST= runs the suite
# in this one process
PYTEST_XDIST ?= -n 2 --dist loadfile --no-loadscope-reorder

.PHONY: setup sysdeps serve test test-fast lint clean

sysdeps:
	@missing=""; for b in ffmpeg:ffmpeg espeak-ng:espeak-ng sox:sox; do \
	  command -v $${b%%:*} >/dev/null || missing="$$missing $${b##*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "please install:$$missing (e.g. sudo apt-get install$$missing)"; fi; fi

$(STAMP): pyproject.toml constraints.txt requirements-nodeps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[dev,sidecar]"
	if grep -qvE '^[[:space:]]*(#|$$)' requirements-nodeps.txt; then \
	  $(PIP) install -q -c constraints.txt --no-deps -r requirements-nodeps.txt; fi
	touch $@

setup: sysdeps $(STAMP)

serve: setup
	$(CHORUS) models import base
	$(CHORUS) up

test: setup
	$(PY) -m pytest -q $(PYTEST_XDIST) $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

test-fast: setup
	$(PY) -m pytest -q -m "not slow" $(PYTEST_XDIST) $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

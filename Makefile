# Two commands do all the set-up on a fresh clone:
#   make demo   install into .venv and run the main job (κ sweep on the embedded MNIST-1D)
#   make test   install into .venv (with dev extras) and run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test install lint

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash examples/kappa_sweep.sh

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check kdcli tests benchmarks

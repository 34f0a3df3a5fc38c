# Every target does its own set-up: a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	# The CPU wheel of torch 2.13.0 lies on this machine's disk; install it first so that
	# no later resolver step pulls a multi-GB CUDA build.
	$(PY) -m pip install -q -c constraints.txt torch
	# No build isolation: deepspeed's sdist must build against the torch installed above.
	$(PY) -m pip install -q --no-build-isolation -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/keye demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/keye bench

clean:
	rm -rf $(VENV) runs

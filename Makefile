# Every target does its own set-up: a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.installed
#: Where this machine keeps its CPU wheel of torch (absent elsewhere).
TORCH_WHEELS := $(wildcard /opt/wheels)

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	# uv installs the project's ~200 packages in ~50 s where pip took ~95 s on this 2-core machine; it is
	# the only package pip installs here. --compile-bytecode as pip does: where PYTHONDONTWRITEBYTECODE is
	# set (this machine), a venv without .pyc files compiles torch & co. in every process (+11 s an import
	# of torch, transformers, prefect and deepspeed; the test suite took 15.5 minutes instead of ~10).
	$(PY) -m pip install -q 'uv>=0.13,<1'
	$(UV) pip install -q --compile-bytecode --python $(PY) setuptools wheel
	# The CPU wheel of torch 2.13.0 lies on this machine's disk (TORCH_WHEELS); install it first so that
	# no later resolver step pulls a multi-GB CUDA build. Elsewhere the index serves torch as usual.
	$(UV) pip install -q --compile-bytecode --python $(PY) $(if $(TORCH_WHEELS),--find-links $(TORCH_WHEELS)) -c constraints.txt torch
	# No build isolation: deepspeed's sdist must build against the torch installed above.
	$(UV) pip install -q --compile-bytecode --python $(PY) --no-build-isolation -c constraints.txt -e '.[dev]'
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

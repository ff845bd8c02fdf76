# gtkernels: `make demo` (main job) and `make test`. Both create .venv, install and build as needed.
#
#   TORCH_SPEC   pip requirement for torch (default: the CPU build torch==2.13.0). Override for a CUDA
#                machine, e.g. TORCH_SPEC="torch==2.11.0", or TORCH_SPEC= (empty) to keep the torch
#                already in the environment (with VENV_FLAGS=--system-site-packages).
#   PYTHON       interpreter that creates the venv (default python3); VENV its folder (default .venv).
PYTHON     ?= python3
VENV       ?= .venv
VENV_FLAGS ?=
TORCH_SPEC ?= torch==2.13.0
PY         := $(VENV)/bin/python
SOURCES    := setup.py $(shell find csrc -type f 2>/dev/null)

.PHONY: demo test build bench clean

demo: build
	$(PY) -m gtkernels.demo

test: build
	$(PY) -m pytest tests -q
	$(PY) -m pytest benchmarks -q --benchmark-disable -k smoke

bench: build
	$(PY) -m pytest benchmarks --benchmark-json=benchmarks/results/latest.json

build: $(VENV)/.built

$(VENV)/.deps: requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	if [ -n "$(TORCH_SPEC)" ]; then $(PY) -m pip install -q "$(TORCH_SPEC)"; fi
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	$(PY) -c "import gtkernels; print('gtkernels backends:', gtkernels.backends())"
	touch $@

clean:
	rm -rf build $(VENV) *.egg-info gtkernels/_C*.so

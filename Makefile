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

.PHONY: run test slurm-test setup clean gpu-check wheels

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

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
gpu-check:
	@if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then \
		$(GPU_PYTHON) -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpu-check-site .whl/*.whl && \
		export PYTHONPATH=/tmp/gpu-check-site:$$PYTHONPATH; fi; \
	PYTHONUNBUFFERED=1 $(GPU_PYTHON) -m benchmarks.gpu_check $(GPU_CHECK_ARGS)

# Wheels for a GPU machine without network (Python 3.12, x86-64): what the project needs beyond its GPU image.
WHEELS := jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 attrs==26.1.0
wheels:
	mkdir -p .whl
	for w in $(WHEELS); do python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d .whl $$w || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache

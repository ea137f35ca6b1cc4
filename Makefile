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

.PHONY: run test slurm-test setup clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m benchmarks.solver_throughput --quick
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores all --configfile config/quick.yaml

test: $(STAMP)
	$(BIN)/python -m pytest

# the quick preset on a one-node SLURM cluster started here (root, Debian/apt), compared with a local run
slurm-test: $(STAMP)
	tests/slurm/run_e2e.sh

clean:
	rm -rf $(VENV) .pytest_cache

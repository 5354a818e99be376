# make repro : set up .venv and run the pipeline (dvc repro, the profile in params.yaml)
# make test  : set up .venv and run the tests
# make repro-timed, plain-baseline, bench: the benchmark suite (benchmarks/, results in reports/)
# On a machine without internet, CIFAR-10 is read from ANOMEM_CIFAR10_DIR (default: ../shared/data/cifar10
# when it exists); with internet and no such folder, prepare_data downloads it through torchvision.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CIFAR_DEFAULT := $(wildcard ../shared/data/cifar10)
ANOMEM_CIFAR10_DIR ?= $(if $(CIFAR_DEFAULT),$(abspath $(CIFAR_DEFAULT)),)
export ANOMEM_CIFAR10_DIR
export MLFLOW_DISABLE_TELEMETRY := true
export PATH := $(abspath $(BIN)):$(PATH)

# A .venv takes about 6.5 GB (torch with its CUDA libraries): until torch imports from it (a new one, or one that pip
# left halfway), say so before pip fails with ENOSPC.
VENV_NEEDS_GB := 7
define VENV_DISK_CHECK
import os, shutil, sys
free = shutil.disk_usage(".").free / 1e9
if free < $(VENV_NEEDS_GB):
    sys.exit(f"setup: {free:.1f} GB free on the disk of {os.getcwd()}; .venv needs about $(VENV_NEEDS_GB) GB (torch with its CUDA libraries). Free disk and re-run.")
endef
export VENV_DISK_CHECK

.PHONY: setup repro repro-timed bench plain-baseline test test-fast mlflow-ui clean-resume

$(BIN)/.installed: pyproject.toml
	$(BIN)/python -c 'import torch' 2>/dev/null || $(PYTHON) -c "$$VENV_DISK_CHECK"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --no-cache-dir --upgrade pip
	$(BIN)/pip install --quiet --no-cache-dir -e '.[test]'
	touch $@

setup: $(BIN)/.installed

repro: setup
	$(BIN)/anomem check-params
	$(BIN)/dvc repro

# dvc repro with wall time, per-stage times, peak memory and disk recorded in reports/benchmarks/grid.json
repro-timed: setup
	$(BIN)/anomem check-params
	$(BIN)/python -m benchmarks.grid

# plain SimCLR + kNN on the same classes and time budget (after a grid run), then the benchmark report
plain-baseline: setup
	$(BIN)/python -m benchmarks.plain_baseline

bench: setup
	$(BIN)/python -m benchmarks

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not e2e"

mlflow-ui: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(abspath mlflow.db)

clean-resume:
	rm -rf data/resume

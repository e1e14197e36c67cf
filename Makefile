# Two commands: `make repro` (install into .venv, run the default pipeline) and `make test`.
# TORCH selects the torch wheel. torch==2.13.0 takes the CPU wheel on this project's CPU machines (and
# in CI), where it lies on disk; elsewhere on Linux, PyPI's torch is a CUDA build of several GB: on a
# CPU-only laptop use TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu". On a GPU machine:
#   make repro TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" EXTRAS=dev,gpu
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
EXTRAS ?= dev
BIN := $(VENV)/bin

.PHONY: install repro test bench clean
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

repro: install
	$(BIN)/dvc repro

# Two pytest workers: one builds the session's shared pipeline run (tests/workspace.py, the tests
# marked xdist_group("workspace")) while the other runs everything else; the 15 slowest are listed.
test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup --durations=15

# The GPU headline numbers (README, docs/performance.md) into benchmarks/results/<card>-<date>/, then
# the docs' tables from them. Needs a CUDA machine installed with EXTRAS=dev,gpu.
bench: install
	$(BIN)/python -m benchmarks run
	$(BIN)/python -m benchmarks report

clean:
	rm -rf $(VENV)

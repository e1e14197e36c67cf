# Two commands: `make repro` (install into .venv, run the default pipeline) and `make test`.
# TORCH selects the torch wheel. By default the CPU build: PyPI's Linux torch is a CUDA build of
# several GB, so scripts/torch_index.py adds `--index-url $(TORCH_INDEX)` (PyTorch's CPU index) where
# that index answers within 3 s, else nothing (pip's configured index or wheel folder). On a GPU machine:
#   make repro TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" EXTRAS=dev,gpu
PYTHON ?= python3
VENV ?= .venv
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH ?= torch==2.13.0 $(shell $(PYTHON) scripts/torch_index.py $(TORCH_INDEX))
EXTRAS ?= dev
BIN := $(VENV)/bin

.PHONY: install repro queue test bench clean
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

repro: install
	$(BIN)/dvc repro

# Runs the experiments queued with `.venv/bin/dvc exp run --queue ...`, JOBS at a time. DVC's queue
# worker starts `dvc` by name, from PATH: the venv's bin folder goes first, so nothing needs to be
# activated (`.venv/bin/dvc queue start` alone would start a worker that dies, leaving them Queued).
JOBS ?= 1
queue: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc queue start -j $(JOBS)

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

# The course's two commands (see README.md). Both create .venv in the repo on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))

.PHONY: course test lab unit notebooks-fast notebooks-solved gpu-check setup clean

# Create the environment and install tinyldm with its test extras (pip's output goes to build/setup.log).
$(STAMP): pyproject.toml
	@mkdir -p build
	@echo "setting up $(VENV) (first run only; log in build/setup.log) ..."
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -e '.[dev]' > build/setup.log 2>&1 \
		|| (tail -n 30 build/setup.log; echo "install failed: see build/setup.log"; exit 1)
	@touch $(STAMP)

setup: $(STAMP)

# Run the course: execute every notebook headless in walkthrough mode into build/notebooks/.
course: $(STAMP)
	$(BIN)/tinyldm course $(NOTEBOOKS)

# Run all the tests: unit tests, then every notebook under nbval in fast mode, as learners get it (exercise stubs)
# and with the reference solutions filled in (solutions/). The checks' results go to their own file, not to yours.
test: unit notebooks-fast notebooks-solved

unit: $(STAMP)
	TINYLDM_FAST=1 $(BIN)/python -m pytest -q tests

notebooks-fast: $(STAMP)
	TINYLDM_FAST=1 TINYLDM_PROGRESS=$(CURDIR)/build/test-exercises.json $(BIN)/python -m pytest -q --nbval-lax \
		-p no:cacheprovider $(NOTEBOOKS)

notebooks-solved: $(STAMP)
	$(BIN)/tinyldm exercises solve $(NOTEBOOKS) --out build/solved > /dev/null
	TINYLDM_FAST=1 TINYLDM_PROGRESS=$(CURDIR)/build/test-exercises.json TINYLDM_EXERCISES_STRICT=1 \
		$(BIN)/python -m pytest -q --nbval-lax -p no:cacheprovider build/solved/*.ipynb

# On a machine with one NVIDIA GPU: the CUDA tests, bf16 training and throughput against diffusers, in about 4 minutes
# (benchmarks/gpu_check.py; the table goes to build/gpu_check.md).
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py --device cuda

# Open the notebooks in JupyterLab instead.
lab: $(STAMP)
	$(BIN)/jupyter lab notebooks

clean:
	rm -rf build

# vfm_lab: `make run` sets up and runs every chapter; `make test` sets up and runs the tests.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
SCALE ?= lab
NBVAL := build/nbval

.PHONY: setup data run test bench lab clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[test,lab]"
	touch $@

# Fashion-MNIST for chapter 01 at lab/full scale (Debian package as root, else a checked download).
data:
	bash data_scripts/fetch.sh fashion-mnist

# The main job: every chapter on the built-in data, then one leaderboard (runs/leaderboard.md).
run: setup data
	$(BIN)/vfm-lab run all -p scale=$(SCALE)

# Unit, learning and DDP tests, doctests, and every notebook at smoke scale under nbval.
test: setup
	rm -rf $(NBVAL) && mkdir -p $(NBVAL)
	for nb in notebooks/*.ipynb; do \
	  name=$$(basename $$nb .ipynb); \
	  $(BIN)/papermill --prepare-only -p scale smoke -p out_dir $(CURDIR)/$(NBVAL)/runs/$$name $$nb $(NBVAL)/$$name.ipynb || exit 1; \
	done
	$(BIN)/python -m pytest --nbval-lax vfm_lab tests $(NBVAL)

bench: setup
	$(BIN)/vfm-lab bench all

# JupyterLab on the chapters.
lab: setup
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf build runs notebooks/runs

# vfm_lab: `make run` sets up and runs every chapter; `make test` sets up and runs the tests.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
SCALE ?= lab
NBVAL := build/nbval
TEST_WORKERS ?= auto

.PHONY: setup browser test-data data run reference test test-kernels bench lab student site clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[test,lab]"
	touch $@

# Debian's Chromium for the JupyterLab browser test (tests/test_browser.py; Playwright drives it, no download).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v "$$VFM_CHROMIUM" >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	  else \
	    echo "Chromium is missing; the JupyterLab browser test needs it: sudo apt-get install -y chromium" \
	         "(Debian/Ubuntu), or set VFM_CHROMIUM to a Chromium or Chrome binary"; \
	  fi; }

# Fashion-MNIST for the tests that read the real files (tests/test_real_data.py, the zero-shot of chapter 02):
# Debian's package, as `make data` installs it. Under CI a test that cannot find it fails instead of skipping.
test-data:
	@test -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz || bash data_scripts/fetch.sh fashion-mnist \
	  || echo "Fashion-MNIST is missing: its tests skip (under CI: fail); as root: apt-get install dataset-fashion-mnist"

# Fashion-MNIST for chapter 01 at lab/full scale (Debian package as root, else a checked download);
# the icon sets with text for chapter 02 (checked Debian/npm sources, built once into data/NAME/v1).
data: setup
	bash data_scripts/fetch.sh fashion-mnist
	for icon_set in emoji openmoji openclipart; do bash data_scripts/fetch.sh $$icon_set || exit 1; done

# The main job: every chapter on the built-in data, then one leaderboard (runs/leaderboard.md).
run: setup data
	$(BIN)/vfm-lab run all -p scale=$(SCALE)

# The reference numbers: every chapter at lab on seeds 0 and 1, one at a time (about twice `make run`), then
# notebooks/reference/NN.json (what each notebook shows next to "this run", and each chapter's expected time)
# and the chapter table of README.md, both written by `python -m vfm_lab.reference` from those runs.
reference: setup data
	$(BIN)/vfm-lab run all -p scale=lab --grid sweeps/reference_seeds.yaml --runs-dir runs/reference
	$(BIN)/python -m vfm_lab.reference runs/reference

# Unit, learning and DDP tests, doctests, every notebook at smoke scale under nbval, and 00_tour in
# JupyterLab in headless Chromium (build/browser/00_tour.png); the 25 slowest are listed at the end.
# pytest-xdist runs TEST_WORKERS processes (a test file, a notebook each), one thread apiece: on 2 cores
# the suite takes 7 minutes instead of 12 (tiny models gain little from a second thread).
test: setup browser test-data
	rm -rf $(NBVAL) && mkdir -p $(NBVAL)
	for nb in notebooks/*.ipynb; do \
	  name=$$(basename $$nb .ipynb); \
	  $(BIN)/papermill --prepare-only -p scale smoke -p out_dir $(CURDIR)/$(NBVAL)/runs/$$name $$nb $(NBVAL)/$$name.ipynb || exit 1; \
	done
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --nbval-lax --durations=25 \
	  vfm_lab tests $(NBVAL)

# The learning tests (marked `learning`: they train and compare a figure with a line) under other CPUs' kernels
# and 1 or 2 threads, then the smallest margin of each check per setting (tests/margins.py). Outside `make test`:
# six passes of about 2 minutes each on 2 cores.
KERNEL_SETTINGS := "" "ATEN_CPU_CAPABILITY=default" "ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2"
test-kernels: setup
	rm -f build/margins.jsonl && mkdir -p build
	for setting in $(KERNEL_SETTINGS); do for threads in 1 2; do \
	  echo "== $${setting:-this CPU's own kernels}, $$threads thread(s)"; \
	  env $$setting OMP_NUM_THREADS=$$threads VFM_LAB_TEST_THREADS=$$threads VFM_LAB_MARGINS=build/margins.jsonl \
	    $(BIN)/python -m pytest -q -m learning tests || exit 1; \
	done; done
	$(BIN)/python -m tests.margins build/margins.jsonl | tee build/margins.md

# Engine overhead, shapes speed, and SSL steps against lightly (in the test extra).
bench: setup
	$(BIN)/vfm-lab bench all

# The student notebooks: each exercise's solution replaced by `raise NotImplementedError()` (nbgrader's ClearSolutions).
student: setup
	$(BIN)/python -m vfm_lab.exercises build/student notebooks/*.ipynb

# The course as a website: build/site/index.html and one page per chapter with the outputs of its newest finished run
# under SITE_RUNS (default runs/, what `make run` writes; `make site SITE_RUNS=runs/reference` shows the reference runs).
SITE_RUNS ?= runs
site: setup
	$(BIN)/python -m vfm_lab.site $(SITE_RUNS) build/site

# JupyterLab on the chapters.
lab: setup
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf build runs notebooks/runs

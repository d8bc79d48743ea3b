# revgn task runner. The two commands a newcomer needs:
#   make book   create/update .venv, execute every chapter with papermill, render the HTML into _build/html
#   make test   create/update .venv, run the unit tests and nbval over the stored chapter notebooks
# Chapter parameters can be overridden: make book SCALE=paper DEVICE=cuda SEED=1

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Chapters in reading order: the notebooks listed in _toc.yml that have a jupytext source.
CHAPTERS := $(shell sed -n 's/^ *\(root\|- file\): *\(chapters\/[0-9][^ ]*\)$$/\2/p' _toc.yml)

# Datasets: use a checked local copy next to the clone when there is one; otherwise the loaders download.
ifeq ($(strip $(REVGN_DATA)),)
  ifneq ($(wildcard ../shared/data/mnist),)
    export REVGN_DATA := $(abspath ../shared/data)
  endif
endif
export PYDEVD_DISABLE_FILE_VALIDATION := 1
# Chapters and tests import this checkout's revgn (the venv's editable install), never one that a PYTHONPATH
# points at: another checkout's revgn reads that checkout's results/, and the chapters would render its records.
unexport PYTHONPATH

# Portable numbers: MKL (matmul), oneDNN (convolutions) and ATen's own vectorised kernels each pick their code
# path by CPU, and reductions split their work by thread count, so two x86 machines differ in the last digits.
# Pin both to what every x86-64 CPU of the last decade has (AVX2) and to two threads, for the book, the tests
# and CI. Each is a default: set it in the environment to override it (e.g. to emulate another CPU with
# MKL_CBWR=COMPATIBLE ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41). OPENBLAS_* is left alone.
export MKL_CBWR ?= AVX2
export ATEN_CPU_CAPABILITY ?= avx2
export ONEDNN_MAX_CPU_ISA ?= AVX2
export OMP_NUM_THREADS ?= 2
export MKL_NUM_THREADS ?= $(OMP_NUM_THREADS)

PARAMS := $(if $(SCALE),-p scale $(SCALE)) $(if $(DEVICE),-p device $(DEVICE)) $(if $(SEED),-y "seed: $(SEED)")
NBVAL  := --nbval-lax --nbval-current-env --nbval-sanitize-with chapters/nbval_sanitize.cfg

.PHONY: book execute sync html html-build browser test unit nbval venv lab clean

book: execute html

venv: $(STAMP)
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 > /dev/null
	touch $@

# papermill has no jupytext support: write the .ipynb from the .py source, then execute it in place. At any
# scale but the book's the executed notebooks go to chapters/<scale>/ (never over the committed book pages).
OUTDIR := $(if $(filter-out book,$(or $(SCALE),book)),chapters/$(SCALE),chapters)
execute: $(STAMP)
	@set -e; mkdir -p $(OUTDIR); for ch in $(CHAPTERS); do \
	  out=$(OUTDIR)/$$(basename $$ch).ipynb; \
	  echo "== executing $$ch -> $$out"; \
	  $(BIN)/jupytext --quiet --to ipynb -o $$out $$ch.py; \
	  $(BIN)/papermill --log-level WARNING -k python3 --cwd chapters $(PARAMS) $$out $$out \
	    || { echo "FAILED: $$ch (the failing cell's traceback is above and in $$out)"; exit 1; }; \
	done

# After a Markdown-only edit: copy the sources' text into the notebooks, keeping the stored outputs.
sync: $(STAMP)
	@for ch in $(CHAPTERS); do $(BIN)/jupytext --quiet --update --to ipynb $$ch.py; done

# Render the stored notebooks, then open every page in headless Chromium, offline (tests/test_book_html.py).
html: html-build browser

# Warnings are errors; --all so a stale page cannot hide a problem.
html-build: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_chapters.py
	$(BIN)/jupyter-book build . --all -W -n --keep-going
	@test -f _build/html/index.html && echo "book: _build/html/index.html"

browser: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_book_html.py
	@echo "screenshots of every page: _build/screenshots/"

# Every test: the unit tests, the browser check of the rendered book, and nbval over the stored chapters.
test: html-build
	$(BIN)/python -m pytest -p no:cacheprovider tests chapters $(NBVAL)

unit: $(STAMP)
	$(BIN)/python -m pytest -p no:cacheprovider tests --ignore=tests/test_book_html.py

nbval: $(STAMP)
	$(BIN)/python -m pytest -p no:cacheprovider chapters $(NBVAL)

# Run chapters as notebooks in JupyterLab: open a chapter's .py or .ipynb; jupytext (jupytext.toml) keeps the pair
# in sync on save. Executed there, a chapter reads the same records as `make book`.
lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=chapters

clean:
	rm -rf _build

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

PARAMS := $(if $(SCALE),-p scale $(SCALE)) $(if $(DEVICE),-p device $(DEVICE)) $(if $(SEED),-y "seed: $(SEED)")
NBVAL  := --nbval-lax --nbval-current-env --nbval-sanitize-with chapters/nbval_sanitize.cfg

.PHONY: book execute sync html test unit nbval venv clean

book: execute html

venv: $(STAMP)
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 > /dev/null
	touch $@

# papermill has no jupytext support: write the .ipynb from the .py source, then execute it in place.
execute: $(STAMP)
	@set -e; for ch in $(CHAPTERS); do \
	  echo "== executing $$ch"; \
	  $(BIN)/jupytext --quiet --to ipynb $$ch.py; \
	  $(BIN)/papermill --log-level WARNING -k python3 --cwd chapters $(PARAMS) $$ch.ipynb $$ch.ipynb \
	    || { echo "FAILED: $$ch (the failing cell's traceback is above and in $$ch.ipynb)"; exit 1; }; \
	done

# After a Markdown-only edit: copy the sources' text into the notebooks, keeping the stored outputs.
sync: $(STAMP)
	@for ch in $(CHAPTERS); do $(BIN)/jupytext --quiet --update --to ipynb $$ch.py; done

# Warnings are errors; --all so a stale page cannot hide a problem.
html: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_chapters.py
	$(BIN)/jupyter-book build . --all -W -n --keep-going
	@test -f _build/html/index.html && echo "book: _build/html/index.html"

test: $(STAMP)
	$(BIN)/python -m pytest -p no:cacheprovider tests chapters $(NBVAL)

unit: $(STAMP)
	$(BIN)/python -m pytest -p no:cacheprovider tests

nbval: $(STAMP)
	$(BIN)/python -m pytest -p no:cacheprovider chapters $(NBVAL)

clean:
	rm -rf _build

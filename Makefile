# Istio MeshLab — every target bootstraps its own virtual environment in .venv.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# The learner's lab (make lab) keeps its state next to the notebooks; `make down` stops it.
LAB_HOME ?= $(CURDIR)/notebooks/.meshlab

.PHONY: install test tutorial lab notebooks bench lint clean down

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,notebooks]'
	@touch $(STAMP)

install: $(STAMP)

## make test: lint, then the whole test suite (unit, embedded-mesh integration, notebooks)
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest
	$(PY) -m pytest --nbval notebooks/

## make tutorial: run every lesson headless and print a summary per lesson
tutorial: $(STAMP)
	$(PY) -m meshlab.tutorial

## make lab: open JupyterLab on the first notebook
lab: $(STAMP)
	MESHLAB_HOME=$(LAB_HOME) $(VENV)/bin/jupyter lab notebooks/00-welcome.ipynb

## make notebooks: re-execute the notebooks in place (refreshes the committed outputs)
notebooks: $(STAMP)
	$(PY) -m meshlab.tutorial --in-place

## make bench: run the benchmarks and write benchmarks/results.md and results.json
bench: $(STAMP)
	$(PY) -m benchmarks.run

lint: $(STAMP)
	$(PY) -m ruff check .

down: $(STAMP)
	MESHLAB_HOME=$(LAB_HOME) $(VENV)/bin/meshlab down

clean:
	rm -rf build .pytest_cache .ruff_cache

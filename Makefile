# The two set-up commands of the README:  `make demo`  and  `make test`.
# Both create a virtual environment in .venv unless one is active, install torch 2.13.0 first
# (the CPU build), then the project in editable mode with its dev extras.

SHELL := /bin/bash
PY ?= python3
VENV ?= .venv

ifdef VIRTUAL_ENV
  BIN := $(VIRTUAL_ENV)/bin
else
  BIN := $(VENV)/bin
endif

.PHONY: install demo test test-all lint clean

$(BIN)/lsc4rec: pyproject.toml
	@if [ -z "$$VIRTUAL_ENV" ] && [ ! -x "$(VENV)/bin/python" ]; then $(PY) -m venv $(VENV); fi
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(BIN)/lsc4rec

demo: install
	$(BIN)/lsc4rec demo

# pytest's exit code 5 means no test was collected: a failure, not a pass.
test: install
	@$(BIN)/python -m pytest; status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	exit $$status

test-all: install
	$(BIN)/python -m pytest -m ''

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) runs *.egg-info

# The two set-up commands of the README:  `make demo`  and  `make test`.
# Both create a virtual environment in .venv unless one is active, install torch first (the CPU
# build pinned in requirements/torch.txt), then every other dependency at the exact version of
# requirements/lock.txt, then the project itself (editable, no dependency resolution).
#
#   make lock         refresh requirements/lock.txt to the newest versions the ranges allow
#   make test-latest  run the tests in .venv-latest on those newest versions (run it first)
#   make mutations    plant known bugs in a copy of the tree and check the tests catch each

SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
LATEST_VENV := .venv-latest
LOCK_VENV := .venv-lock
LOCK := requirements/lock.txt
TORCH := requirements/torch.txt
PIP_TOOLS := pip-tools==7.6.2
# -qq: errors only. pip and the build backend otherwise print notices about this machine's
# package indexes and editable installs into the demo's output.
PIP_QUIET := --quiet --quiet

ifdef VIRTUAL_ENV
  BIN := $(VIRTUAL_ENV)/bin
else
  BIN := $(VENV)/bin
endif

# The packages the closing check of `make test-latest` names.
KEY_PACKAGES := torch transformers peft grpcio protobuf onnxruntime

.PHONY: install demo test test-all test-latest lock lint mutations clean

$(BIN)/lsc4rec: pyproject.toml $(LOCK) $(TORCH)
	@if [ -z "$$VIRTUAL_ENV" ] && [ ! -x "$(VENV)/bin/python" ]; then $(PY) -m venv $(VENV); fi
	$(BIN)/python -m pip install $(PIP_QUIET) --upgrade pip
	$(BIN)/python -m pip install $(PIP_QUIET) -r $(TORCH)
	$(BIN)/python -m pip install $(PIP_QUIET) -r $(LOCK)
	$(BIN)/python -m pip install $(PIP_QUIET) --no-deps --no-build-isolation -e .
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

# Plant known bugs one at a time in a copy of the tree; the tests guarding each must fail.
mutations: install
	$(BIN)/python tests/mutations.py

# A fresh environment with the newest release every declared range allows (torch stays the
# pinned CPU build): the check to run before `make lock`.
test-latest:
	rm -rf $(LATEST_VENV)
	$(PY) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install $(PIP_QUIET) --upgrade pip
	$(LATEST_VENV)/bin/python -m pip install $(PIP_QUIET) -r $(TORCH)
	$(LATEST_VENV)/bin/python -m pip install $(PIP_QUIET) -e '.[full,dev]'
	@$(LATEST_VENV)/bin/python -c "import importlib.metadata as m; \
	print('make test-latest resolved: ' + ', '.join(p + ' ' + m.version(p) for p in '$(KEY_PACKAGES)'.split()))"
	$(LATEST_VENV)/bin/python -m pytest -p no:cacheprovider

# Re-resolve every runtime and dev dependency to the newest versions the ranges allow. Torch is
# resolved (its own dependencies are locked) but not written: it comes from $(TORCH).
lock:
	@if [ ! -x "$(LOCK_VENV)/bin/pip-compile" ]; then \
	  $(PY) -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/python -m pip install $(PIP_QUIET) $(PIP_TOOLS); fi
	$(LOCK_VENV)/bin/pip-compile --quiet --upgrade --extra full --extra dev --strip-extras \
	  --no-emit-index-url --no-emit-find-links --unsafe-package torch --constraint $(TORCH) \
	  --output-file $(LOCK) pyproject.toml
	@echo "lock refreshed: set the lower bounds in pyproject.toml to the new versions (tests/test_lock.py checks), then make test"

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) $(LATEST_VENV) $(LOCK_VENV) runs *.egg-info

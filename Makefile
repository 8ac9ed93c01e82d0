# Two commands for a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
# Both install exactly requirements.lock (every package pinned, with hashes); `make lock` moves it,
# `make test-latest` tries the newest release of every dependency in a throwaway venv.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LATEST := .venv-latest
# Where pip and uv find the CPU build of torch (the lock pins torch==2.13.0+cpu): this machine's
# wheel folder. Elsewhere: `make PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu ...`.
TORCH_WHEELS ?= /opt/wheels
export PIP_FIND_LINKS := $(TORCH_WHEELS)

.PHONY: venv test test-latest demo lint lock bench clean python-check

# The lock pins wheels for CPython 3.11 (torch's CPU build is one wheel per Python version).
python-check:
	@command -v $(PYTHON) >/dev/null 2>&1 || { \
	  echo "error: $(PYTHON) not found. The lock (requirements.lock) is for CPython 3.11: install it" \
	       "(pyenv install 3.11, or your distribution's python3.11) or see docs/environment.md" \
	       "for 3.12/3.13." >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { \
	  echo "error: $(PYTHON) is not CPython 3.11; requirements.lock is for 3.11 (docs/environment.md)." >&2; \
	  exit 1; }

$(PY): | python-check
	$(PYTHON) -m venv $(VENV)

# Exactly the lock, hashes checked; the project itself without dependencies (they are all in the lock).
$(STAMP): $(PY) requirements.lock pyproject.toml
	$(PY) -m pip install --quiet --require-hashes --no-deps -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

demo: $(STAMP)
	$(VENV)/bin/pilot demo

bench: $(STAMP)
	$(PY) bench/engine.py

# Resolve pyproject.toml's ranges (and requirements.in) to the newest releases, for CPython 3.11.
# Needs only the venv's Python and the lock's uv: a pyproject.toml that the old lock no longer satisfies can be locked.
UV_VERSION = $(shell sed -n 's/^uv==\([^ ]*\).*/\1/p' requirements.lock)
lock: $(PY)
	$(PY) -m pip install --quiet uv==$(UV_VERSION)
	$(VENV)/bin/uv pip compile pyproject.toml requirements.in --extra dev --python-version 3.11 \
	    --generate-hashes --find-links $(TORCH_WHEELS) --quiet -o requirements.lock
	@echo "requirements.lock updated: run 'make test', then commit it."

# The newest release of every dependency (torch stays the CPU build: requirements.in pins it), in a throwaway venv: an
# upstream release that breaks us shows up here, not in a fresh `make test` (which keeps the lock).
test-latest: | python-check
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install --quiet --upgrade pip
	$(LATEST)/bin/pip install --quiet torch==2.13.0
	$(LATEST)/bin/pip install --quiet --upgrade --upgrade-strategy eager -e ".[dev]" --constraint requirements.in
	$(LATEST)/bin/python -m pip check
	$(LATEST)/bin/python scripts/compare_lock.py requirements.lock
	$(LATEST)/bin/python -m pytest -q

clean:
	rm -rf $(VENV) $(LATEST) build *.egg-info

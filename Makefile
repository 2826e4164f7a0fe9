# make test  - set up .venv (idempotent) and run the whole test suite
# make bench - set up .venv and run the time-machine training benchmark
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.14.1
# The Time Machine text: ../shared/data on the project's machines, else FASTRNN_DATA or the user cache.
DATA := $(firstword $(wildcard ../shared/data/timemachine.txt))
ifneq ($(DATA),)
export FASTRNN_DATA ?= $(abspath $(DATA))
endif
# The nvcc on PATH may be a wrapper script; point CUDA_HOME at the toolkit it runs.
CUDA_HOME ?= $(shell .ci/cuda_home.sh)
ifneq ($(CUDA_HOME),)
export CUDA_HOME
endif
export MAX_JOBS ?= 2
SOURCES := $(shell find csrc -type f 2>/dev/null) setup.py pyproject.toml

.PHONY: setup test bench bench-layers clean
setup: $(VENV)/.deps $(VENV)/.built

$(VENV)/.deps: Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q "$(TORCH_SPEC)" ninja pytest pytest-benchmark hypothesis numpy matplotlib tqdm
	touch $@

# Builds fastrnn._C in place (the CUDA variant whenever a toolkit is found, GPU or
# not) with a fresh, complete compile, and fails on any warning in csrc/ or any
# register spill (.ci/check_build.py); a .pth file puts the checkout on the venv's path.
$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	mkdir -p build
	FASTRNN_BUILD_CUDA=$(if $(CUDA_HOME),1,0) $(PY) .ci/check_build.py
	$(PY) -c "import site, os; open(os.path.join(site.getsitepackages()[0], 'fastrnn-checkout.pth'), 'w').write(os.getcwd() + '\\n')"
	touch $@

test: setup
	$(PY) -m pytest tests -q -ra

bench: setup
	$(PY) bench/time_machine.py $(ARGS)

bench-layers: setup
	$(PY) -m pytest bench/test_layer_bench.py --benchmark-only $(ARGS)

clean:
	rm -rf build *.egg-info fastrnn/*.so $(VENV)/.built

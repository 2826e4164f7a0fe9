# make test  - set up .venv (idempotent) and run the whole test suite
# make test-seeds - the randomized suites under 50 base seeds (issue #17's proof)
# make bench - set up .venv and run the time-machine training benchmark
# make test-install - build a wheel, install it into a new venv, run python -m fastrnn check/bench there
# make test-compat - the GPU machine's torch 2.11 / Triton 3.6 on the CPU (.ci/compat.sh, own .venv-compat)
# make test-gpu-dry - the GPU session's one device call (.ci/gpu_session.sh) dry, without a GPU
# make test-kernels - the ATen-free CPU vector and int8 kernels alone (tests/kernels/), natively; part of make test
# make test-isa - every CPU class this machine runs (FASTRNN_CPU_ISA with torch's own caps): check, the cpu
#                parity and autocast tests and make bench's smoke per class (.ci/isa_classes.py, <= 5 min)
# make test-aarch64 - the same cross-compiled for aarch64 and run under qemu-user, and the whole
#                     extension's C++ compiled for aarch64 (installs Debian's cross toolchain and qemu)
# make test-aarch64-torch - the whole extension built for aarch64 and its cpu tests run with an aarch64
#                     Python and torch under qemu-user (.ci/aarch64_torch.sh; ~15 min, not in CI)
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

.PHONY: setup test test-install test-compat test-kernels test-isa test-aarch64 test-aarch64-torch bench bench-layers clean
setup: $(VENV)/.deps $(VENV)/.built

$(VENV)/.deps: Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q "$(TORCH_SPEC)" ninja pytest pytest-benchmark hypothesis expecttest numpy matplotlib tqdm \
	  onnx onnxruntime onnxscript flashrnn==1.0.8 einops
	touch $@

# Builds fastrnn._C in place (the CUDA variant whenever a toolkit is found, GPU or
# not) with a fresh, complete compile, and fails on any warning in csrc/ or any
# register spill (.ci/check_build.py); a .pth file puts the checkout on the venv's path.
$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	mkdir -p build
	FASTRNN_BUILD_CUDA=$(if $(CUDA_HOME),1,0) $(PY) .ci/check_build.py
	$(PY) -c "import site, os; open(os.path.join(site.getsitepackages()[0], 'fastrnn-checkout.pth'), 'w').write(os.getcwd() + '\\n')"
	touch $@

# One base seed for the whole run, printed; every test's random inputs derive from
# it and the test's id (tests/conftest.py).  Replay a run: make test FASTRNN_TEST_SEED=N.
ifndef FASTRNN_TEST_SEED
FASTRNN_TEST_SEED := $(shell od -An -N4 -tu4 /dev/urandom | tr -d ' ')
endif
export FASTRNN_TEST_SEED
# make test-seeds: the randomized suites under SEEDS consecutive base seeds
# (SEEDS_SLOW for the slower module-level stack and interpreter suites), from
# FASTRNN_TEST_SEED on.
SEEDS ?= 50
SEEDS_SLOW ?= 10
SEED_FAST := tests/test_parity.py tests/test_ops.py tests/test_ext_cpu.py tests/test_numerics.py tests/test_step_gemm.py tests/test_autocast.py tests/test_cells.py
SEED_FAST_INTERP := tests/interpret/test_cells.py
SEED_SLOW := tests/test_stack.py
SEED_SLOW_INTERP := tests/interpret/test_stacks.py tests/interpret/test_half.py tests/interpret/test_tune.py

.PHONY: test-seeds
# tests/interpret (Triton's interpreter) is its own invocation: TRITON_INTERPRET
# must be set before Triton is first imported.
test: setup test-kernels
	@echo "FASTRNN_TEST_SEED=$(FASTRNN_TEST_SEED)"
	$(PY) -m pytest tests -q -ra
	$(PY) -m pytest tests/interpret -q -ra

# ONLY=<test files or ids>: just that selection under SEEDS base seeds (a part of the
# proof, e.g. ONLY=tests/test_ext_cpu.py FASTRNN_TEST_SEED=1039 SEEDS=11).
test-seeds: setup
ifdef ONLY
	@echo "FASTRNN_TEST_SEED=$(FASTRNN_TEST_SEED): $(SEEDS) seeds of $(ONLY)"
	$(PY) -m pytest $(ONLY) -q -ra -p no:cacheprovider --seeds $(SEEDS)
else
	@echo "FASTRNN_TEST_SEED=$(FASTRNN_TEST_SEED): $(SEEDS) seeds (slow interpreter suites $(SEEDS_SLOW))"
	$(PY) -m pytest $(SEED_FAST) -q -ra -p no:cacheprovider --seeds $(SEEDS)
	$(PY) -m pytest $(SEED_FAST_INTERP) -q -ra -p no:cacheprovider --seeds $(SEEDS)
	$(PY) -m pytest $(SEED_SLOW) -q -ra -p no:cacheprovider --seeds $(SEEDS_SLOW)
	$(PY) -m pytest $(SEED_SLOW_INTERP) -q -ra -p no:cacheprovider --seeds $(SEEDS_SLOW)
endif

# A user's install (issue #15): a wheel from this tree into a new venv, then
# `python -m fastrnn check` and `bench` from outside the tree (.ci/install_check.sh).
test-install: setup
	PY=$(abspath $(PY)) .ci/install_check.sh

# The CPU vector kernels (csrc/cpu/vec_gemm.*: no ATen) in a small program of
# their own, checked bit for bit against a scalar fused sum: every vector unit
# this CPU runs natively; NEON cross-compiled for aarch64 under qemu-user.
# -ffp-contract=off keeps the reference's sums unfused; -Werror as check_build.
KERNEL_SRC := tests/kernels/vec_gemm_test.cpp csrc/cpu/vec_gemm.cpp
KERNEL_DEPS := $(KERNEL_SRC) csrc/cpu/vec_gemm.h csrc/cpu/vec_tile.inc
KERNEL_FLAGS := -O2 -std=c++17 -Wall -Wextra -Werror -ffp-contract=off
CXX_AARCH64 ?= aarch64-linux-gnu-g++

build/vec_gemm_test: $(KERNEL_DEPS)
	mkdir -p build
	$(CXX) $(KERNEL_FLAGS) $(KERNEL_SRC) -o $@

# The int8 kernels (csrc/cpu/int8_gemm.*: no ATen) against exact integer sums:
# every unit this CPU runs (VNNI, AVX2, scalar; sdot and plain NEON under qemu).
INT8_SRC := tests/kernels/int8_gemm_test.cpp csrc/cpu/int8_gemm.cpp
build/int8_gemm_test: $(INT8_SRC) csrc/cpu/int8_gemm.h
	mkdir -p build
	$(CXX) $(KERNEL_FLAGS) $(INT8_SRC) -o $@

# The persistent CUDA kernels' launch-shape search (csrc/cuda/persistent_plan.h, no
# CUDA calls) against H100/H200/A100 limits, with the old search as an oracle.
build/persistent_plan_test: tests/kernels/persistent_plan_test.cpp csrc/cuda/persistent_plan.h
	mkdir -p build
	$(CXX) $(KERNEL_FLAGS) tests/kernels/persistent_plan_test.cpp -o $@

test-kernels: build/vec_gemm_test build/persistent_plan_test build/int8_gemm_test
	build/vec_gemm_test $(FASTRNN_TEST_SEED)
	build/int8_gemm_test $(FASTRNN_TEST_SEED)
	build/persistent_plan_test

# Every FASTRNN_CPU_ISA class this CPU can run, each in fresh processes under its
# caps for fastrnn and torch (oneDNN, ATen, MKL): python -m fastrnn check, the cpu
# backend's parity and autocast tests, and make bench's smoke (2 short epochs,
# every row trained or skipped with its reason, the JSON naming the class's paths).
test-isa: setup
	$(PY) .ci/isa_classes.py

test-aarch64: setup
	@if ! command -v $(CXX_AARCH64) >/dev/null || ! command -v qemu-aarch64 >/dev/null; then \
	  if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
	    echo "test-aarch64: SKIPPED: $(CXX_AARCH64) or qemu-aarch64 missing, and no root apt-get to install them"; \
	    exit 0; fi; \
	  echo "installing Debian's aarch64 cross compiler and qemu-user"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++-aarch64-linux-gnu qemu-user \
	    >/dev/null || exit 1; \
	fi; \
	mkdir -p build && \
	echo "$(CXX_AARCH64) $(KERNEL_FLAGS) -static $(KERNEL_SRC) -o build/vec_gemm_test.aarch64" && \
	$(CXX_AARCH64) $(KERNEL_FLAGS) -static $(KERNEL_SRC) -o build/vec_gemm_test.aarch64 && \
	qemu-aarch64 build/vec_gemm_test.aarch64 $(FASTRNN_TEST_SEED) && \
	$(CXX_AARCH64) $(KERNEL_FLAGS) -static $(INT8_SRC) -o build/int8_gemm_test.aarch64 && \
	qemu-aarch64 build/int8_gemm_test.aarch64 $(FASTRNN_TEST_SEED) && \
	qemu-aarch64 -cpu cortex-a53 build/int8_gemm_test.aarch64 $(FASTRNN_TEST_SEED) && \
	CXX_AARCH64=$(CXX_AARCH64) $(PY) .ci/aarch64_syntax.py

test-aarch64-torch: setup
	PY=$(abspath $(PY)) CXX_AARCH64=$(CXX_AARCH64) .ci/aarch64_torch.sh

# The extension's build and CPU tests, the Triton interpreter tests and the sm_80/sm_90
# AOT compile under the GPU machine's versions, in a copy of the tree (build/compat/).
test-compat:
	.ci/compat.sh

bench: setup
	$(PY) bench/time_machine.py $(ARGS)

bench-layers: setup
	$(PY) -m pytest bench/test_layer_bench.py --benchmark-only $(ARGS)

clean:
	rm -rf build *.egg-info fastrnn/*.so $(VENV)/.built

# The GPU session's dry run (.ci/gpu_session.sh with GPU_DRY_RUN=1): every step of the
# one device call checked without a GPU (each pytest selection collected, each script's
# arguments parsed, the caps summed, the results packed), in well under a minute.
.PHONY: test-gpu-dry
test-gpu-dry: setup
	GPU_DRY_RUN=1 PY=$(abspath $(PY)) bash .ci/gpu_session.sh

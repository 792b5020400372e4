# `make demo` and `make test` each set up .venv from nothing (Python venv, dependencies, torch when
# missing, the C++ core), then run. Re-running reuses what is already built.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
TORCH  := torch==2.13.0
DEPS_STAMP := $(VENV)/.deps
CORE_STAMP := $(VENV)/.core
CUDA_STAMP := $(VENV)/.cuda-build
CORE_SRC   := $(wildcard csrc/*.cpp csrc/*.hpp csrc/cuda/*) CMakeLists.txt pyproject.toml
PYTEST_ARGS ?=

.PHONY: demo test bench bench-baseline venv core core-cuda clean

demo: $(CORE_STAMP)
	$(BIN)/nextick backtest --strategy ssm --compare momentum --oracle --alpha-strength 3

test: $(CUDA_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# pytest-benchmark suites, then a report of changes beyond 20% against bench/baseline.json (a report:
# it never fails). `make bench-baseline` makes the latest run the baseline. `nextick bench` is the
# user-facing report (JSON, Markdown, HTML).
bench: $(CORE_STAMP)
	mkdir -p .benchmarks
	$(PY) -m pytest bench --benchmark-only --benchmark-columns=min,median,mean,ops,rounds \
		--benchmark-json=.benchmarks/latest.json $(PYTEST_ARGS)
	$(PY) -m bench.compare bench/baseline.json .benchmarks/latest.json

bench-baseline:
	cp .benchmarks/latest.json bench/baseline.json

venv: $(DEPS_STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Build tools live in the venv so the core rebuilds incrementally without build isolation.
$(DEPS_STAMP): | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet "scikit-build-core>=0.10" "pybind11>=2.12" "cmake>=3.18" ninja
	touch $@

# Runtime and test dependencies come from pyproject.toml; the editable install builds engine._core
# (CPU only).
$(CORE_STAMP): $(DEPS_STAMP) $(CORE_SRC)
	$(PY) -m pip install --quiet --no-build-isolation --editable ".[test]"
	$(PY) -c "import engine._core as c; print('nextick core', c.build_info())"
	touch $@

core: $(CORE_STAMP)

# The tests also compile the CUDA backend (tests/test_cuda_compile.py), with nvcc from PyPI: the
# cuda-build extra, ~125 MB of wheels, ~350 MB installed, a few seconds. The demo does without.
$(CUDA_STAMP): $(CORE_STAMP)
	$(PY) -m pip install --quiet --no-build-isolation --editable ".[test,cuda-build]"
	touch $@

# engine._core with the CUDA backend, compiled by the cuda-build extra's nvcc unless CUDACXX names
# another, in a build folder of its own (build/cuda). Building needs no GPU; running does. A later
# `make core`, or `make test` after a source change, installs the CPU-only core again.
NVCC_WHEEL = $(abspath $(firstword $(wildcard $(VENV)/lib/python3*/site-packages/nvidia/cu*/bin/nvcc)))
core-cuda: $(CUDA_STAMP)
	NEXTICK_CUDA=ON SKBUILD_BUILD_DIR=build/cuda CUDACXX="$${CUDACXX:-$(NVCC_WHEEL)}" \
		$(PY) -m pip install --quiet --no-build-isolation --editable ".[test,cuda-build]"
	$(PY) -c "import engine._core as c; print('nextick core', c.build_info())"

clean:
	rm -rf build $(VENV) .pytest_cache .hypothesis .benchmarks

# `make demo` and `make test` each set up .venv from nothing (Python venv, dependencies, torch when
# missing, the C++ core), then run. Re-running reuses what is already built.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
TORCH  := torch==2.13.0
DEPS_STAMP := $(VENV)/.deps
CORE_STAMP := $(VENV)/.core
CORE_SRC   := $(wildcard csrc/*.cpp csrc/*.hpp csrc/*.cu) CMakeLists.txt pyproject.toml
PYTEST_ARGS ?=

.PHONY: demo test bench venv core clean

demo: $(CORE_STAMP)
	$(BIN)/nextick backtest

test: $(CORE_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(CORE_STAMP)
	$(PY) -m pytest bench --benchmark-only --benchmark-columns=min,median,mean,ops,rounds $(PYTEST_ARGS)

venv: $(DEPS_STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Build tools live in the venv so the core rebuilds incrementally without build isolation.
$(DEPS_STAMP): pyproject.toml | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet "scikit-build-core>=0.10" "pybind11>=2.12" "cmake>=3.18" ninja
	$(PY) -m pip install --quiet numpy msgspec websockets uvloop pyarrow tzdata \
		"pytest>=8" "pytest-benchmark>=4" "hypothesis>=6.100"
	touch $@

$(CORE_STAMP): $(DEPS_STAMP) $(CORE_SRC)
	$(PY) -m pip install --quiet --no-build-isolation --no-deps --editable .
	$(PY) -c "import engine._core as c; print('nextick core', c.build_info())"
	touch $@

core: $(CORE_STAMP)

clean:
	rm -rf build $(VENV) .pytest_cache .hypothesis .benchmarks

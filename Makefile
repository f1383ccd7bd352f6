# The two commands a newcomer needs: `make demo` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= /tmp/flan_jax_demo
T5_VERSION := 0.9.4
# The tests' PyTorch, installed first so that the test extra's `torch` is already met by a CPU build.
TORCH_VERSION := 2.13.0
TEST_ENV := TF_CPP_MIN_LOG_LEVEL=3 JAX_PLATFORMS=cpu
# glibc: back XLA's large per-step CPU buffers with transparent huge pages instead of faulting in 4 KiB
# pages on every step (docs/models.md, "Speed on CPU"); other C libraries ignore the variable. Training
# gains; the tests, mostly start-up and compiles, do not, so only the demo sets it.
GLIBC_TUNABLES ?= glibc.malloc.hugetlb=1
DEMO_ENV := $(TEST_ENV) GLIBC_TUNABLES=$(GLIBC_TUNABLES)

.PHONY: install demo lint test clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install torch==$(TORCH_VERSION)
	$(BIN)/pip install -e '.[test]'
	# t5 without its pins (they would replace seqio and tensorflow-datasets with nightlies)
	$(BIN)/pip install --no-deps t5==$(T5_VERSION)
	touch $@

demo: install
	rm -rf $(DEMO_DIR)
	$(DEMO_ENV) $(BIN)/python -m flan_jax.study --gin_file=studies/demo.gin --gin.STUDY_DIR=$(DEMO_DIR)

# Lint (ruff.toml: pyflakes, pycodestyle, import order) takes seconds, so every test run starts with it.
lint: install
	$(BIN)/ruff check .

# Test files run in parallel worker processes (pytest-xdist), one file per worker at a time so that each
# module's shared fixtures (a trained run, a compiled model) are built once (tests/conftest.py starts the
# longest files first). Three workers on 2 cores: much of the suite waits (subprocesses starting, two-process jobs
# meeting, a stopped bucket's client retrying), and the third runs tests in those waits, so that the 2 cores stay
# busy. Measured on 2 cores, two fresh clones, an empty compile cache: 1,126 tests in 14 min 58 s and 16 min 13 s
# (30 and 33 CPU-minutes, so the cores are the limit); with 2 workers the suite took about 20 minutes.
# TEST_WORKERS=0 runs them in this process, one test at a time.
TEST_WORKERS ?= 3
test: install lint
	$(TEST_ENV) $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --maxprocesses=4 --dist loadfile tests

clean:
	rm -rf $(VENV) *.egg-info

# `make demo` and `make test` each do the whole set-up on a fresh machine:
# a local virtual environment in .venv with lkconv installed in editable mode.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup demo test clean gpu-check gpu-check-smoke gpu-wheels

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# trains InceptionNeXt-atto on the handwritten digits shipped with scikit-learn (CPU, a few minutes);
# passive OpenMP waiting keeps a busy machine's spinning threads from slowing training several-fold
demo: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(BIN)/lkconv train -c configs/demo/digits_inceptionnext_atto.yaml

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Everything lkconv promises on a GPU, verified and measured in at most 7 minutes (docs/benchmarks.md).
# Runs with $(PYTHON) as it is, no .venv: a GPU machine brings its own torch and triton.
GPU_CHECK_OUT ?=
GPU_CHECK_ARGS ?=
gpu-check:
	$(PYTHON) -m lkconv.bench.gpu_check $(if $(GPU_CHECK_OUT),--out $(GPU_CHECK_OUT)) $(GPU_CHECK_ARGS)

# the same code paths on the CPU: tiny shapes, kernels interpreted, CUDA-only steps reported as skipped
gpu-check-smoke: $(STAMP)
	$(BIN)/python -m lkconv.bench.gpu_check --smoke $(if $(GPU_CHECK_OUT),--out $(GPU_CHECK_OUT)) $(GPU_CHECK_ARGS)

# wheels of the pinned timm for a GPU machine without network (Python 3.12), into .whl/
gpu-wheels:
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
		$$(grep '^timm==' constraints.txt)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

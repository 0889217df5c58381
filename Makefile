# `make demo` and `make test` each do the whole set-up on a fresh machine:
# a local virtual environment in .venv with lkconv installed in editable mode.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup demo test clean

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

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

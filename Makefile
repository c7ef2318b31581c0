# Two commands do everything on a fresh machine: `make train` and `make test`.
PYTHON ?= python3
VENV := .venv
# Local copies of MNIST and Fashion-MNIST to link into data/, when you have them.
DATA_DIR ?= ../shared/data
# Flags for train.py, e.g. `make train ARGS="--epochs 2"`.
ARGS ?=

.PHONY: train test test-fast lint data

# The supported Pythons: 3.10 and newer (the code uses 3.10 syntax; CI runs 3.11).
$(VENV)/installed: requirements.txt requirements-dev.txt requirements-deploy.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
		{ echo "error: Python 3.10 or newer is needed; $(PYTHON) is $$($(PYTHON) -V 2>&1)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(VENV)/bin/python -m pip install -q --no-deps -e .
	touch $@

# Links local copies of MNIST and Fashion-MNIST into data/ when DATA_DIR has them; otherwise the
# scripts download them into data/ on first use.
data:
	@for name in MNIST FashionMNIST; do \
		if [ -d $(DATA_DIR)/$$name/raw ] && [ ! -e data/$$name ]; then \
			ln -s "$$(cd $(DATA_DIR)/$$name && pwd)" data/$$name && echo "linked data/$$name -> $(DATA_DIR)/$$name"; \
		fi; done

train: $(VENV)/installed data
	$(VENV)/bin/python train.py $(ARGS)

test: $(VENV)/installed data
	$(VENV)/bin/python -m pytest

# The tier to run while working: everything but the real-data trainings and the slow processes.
test-fast: $(VENV)/installed data
	$(VENV)/bin/python -m pytest -m "not slow"

lint: $(VENV)/installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# Two commands do everything on a fresh machine: `make train` and `make test`.
PYTHON ?= python3
VENV := .venv
SHARED_DATA := ../shared/data

.PHONY: train test data

# The supported Pythons: 3.10 and newer (the code uses 3.10 syntax; CI runs 3.11).
$(VENV)/installed: requirements.txt requirements-dev.txt requirements-deploy.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
		{ echo "error: Python 3.10 or newer is needed; $(PYTHON) is $$($(PYTHON) -V 2>&1)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q -r requirements.txt -r requirements-dev.txt
	touch $@

# Links local copies of MNIST and Fashion-MNIST into data/ when they sit beside the project;
# otherwise the scripts download them into data/ on first use.
data:
	@for name in MNIST FashionMNIST; do \
		if [ -d $(SHARED_DATA)/$$name/raw ] && [ ! -e data/$$name ]; then \
			ln -s "$$(cd $(SHARED_DATA)/$$name && pwd)" data/$$name && echo "linked data/$$name -> $(SHARED_DATA)/$$name"; \
		fi; done

train: $(VENV)/installed data
	$(VENV)/bin/python train.py

test: $(VENV)/installed data
	$(VENV)/bin/python -m pytest

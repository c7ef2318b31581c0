# Two commands do everything on a fresh machine: `make train` and `make test`.
PYTHON ?= python3
VENV := .venv
SHARED_MNIST := ../shared/data/MNIST

.PHONY: train test data

$(VENV)/installed: requirements.txt requirements-dev.txt requirements-deploy.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q -r requirements.txt -r requirements-dev.txt
	touch $@

# Links a local copy of MNIST into data/ when one sits beside the project;
# otherwise the scripts download it into data/ on first use.
data:
	@if [ -d $(SHARED_MNIST)/raw ] && [ ! -e data/MNIST ]; then \
		ln -s "$$(cd $(SHARED_MNIST) && pwd)" data/MNIST && echo "linked data/MNIST -> $(SHARED_MNIST)"; fi

train: $(VENV)/installed data
	$(VENV)/bin/python train.py

test: $(VENV)/installed data
	$(VENV)/bin/python -m pytest

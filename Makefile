# `make vae` trains the VAE, `make test` runs the tests, `make figures` regenerates every
# committed figure and result. Each target first creates .venv from requirements.txt, again
# whenever requirements.txt is newer than the last install.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
LESSONS := VariationalAutoEncoder_tf2.py

.PHONY: vae test figures clean

vae: $(INSTALLED)
	$(PY) VariationalAutoEncoder_tf2.py

test: $(INSTALLED)
	$(PY) -m pytest

figures: $(INSTALLED)
	for lesson in $(LESSONS); do $(PY) $$lesson || exit 1; done

$(INSTALLED): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --disable-pip-version-check -r requirements.txt
	touch $@

clean:
	rm -rf $(VENV) models checkpoints .pytest_cache

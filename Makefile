# `make vae` trains the VAE, `make test` runs the tests, `make figures` regenerates every
# committed figure and result, `make bench` times the lessons against plain Keras. Each target
# first creates .venv from requirements.txt, again whenever requirements.txt is newer than the
# last install.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: vae dae cvae sparse contractive ae pretrain test figures bench clean

# One target per lesson, each running the script with its defaults.
vae: $(INSTALLED)
	$(PY) VariationalAutoEncoder_tf2.py

dae: $(INSTALLED)
	$(PY) StackedDenoisingAutoEncoder.py

cvae: $(INSTALLED)
	$(PY) ConditionalVAE.py

sparse: $(INSTALLED)
	$(PY) SparseAutoEncoder.py

contractive: $(INSTALLED)
	$(PY) ContractiveAutoEncoder.py

# --sweep also trains the autoencoders at every code size, for the committed compression curve.
ae: $(INSTALLED)
	$(PY) AutoEncoder.py --sweep

pretrain: $(INSTALLED)
	$(PY) GreedyPretraining.py

test: $(INSTALLED)
	$(PY) -m pytest

figures: vae dae cvae sparse contractive ae pretrain

# Seconds per epoch and peak memory of every lesson against plain Keras, on full-size data
# (results/bench.json; about an hour on 2 CPU cores). Not part of `make test`.
bench: $(INSTALLED)
	$(PY) benchmarks/bench.py

$(INSTALLED): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --disable-pip-version-check -r requirements.txt
	touch $@

clean:
	rm -rf $(VENV) models checkpoints .pytest_cache

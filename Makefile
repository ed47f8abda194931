# `make vae` trains the VAE, `make test` runs the tests (`make test-fast` the quick part of them), `make figures` regenerates every
# committed figure and result, `make notebooks` regenerates notebooks/ from the lessons, `make
# site` builds the book into site/, `make bench` times the lessons against plain Keras. Each
# target first creates .venv from requirements.txt, again whenever requirements.txt is newer
# than the last install; `make notebooks` and `make site` also install requirements-notebooks.txt
# and requirements-book.txt, each with a stamp of its own, and `make site` the ONNX exporters
# (requirements-export.txt) and, with npm, ONNX Runtime Web (book/package-lock.json) for the
# latent explorers; `make backends` installs JAX and PyTorch (requirements-backends.txt), and
# `make test` installs all of them.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
NOTEBOOKS_INSTALLED := $(VENV)/.installed-notebooks
BOOK_INSTALLED := $(VENV)/.installed-book
BACKENDS_INSTALLED := $(VENV)/.installed-backends
EXPORT_INSTALLED := $(VENV)/.installed-export
ORT_INSTALLED := book/node_modules/.package-lock.json

.PHONY: vae dae cvae sparse contractive ae pretrain mae vqvae test test-fast figures notebooks site bench backends clean

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
	$(PY) AutoEncoder.py --sweep --out .

pretrain: $(INSTALLED)
	$(PY) GreedyPretraining.py

# --sweep also trains the masked autoencoder at every mask ratio, for the committed sweep curve.
mae: $(INSTALLED)
	$(PY) MaskedAutoEncoder.py --sweep --out .

vqvae: $(INSTALLED)
	$(PY) VQVAE.py

# The tests run the notebooks in a Jupyter kernel, open the book in headless Chromium, and run
# every lesson on JAX and PyTorch too.
# Two workers (pytest-xdist), each taking whole modules: on 2 CPU cores much of a test is waiting
# on a child process or a kernel, and the slowest modules run side by side.
test: $(INSTALLED) $(NOTEBOOKS_INSTALLED) $(BOOK_INSTALLED) $(BACKENDS_INSTALLED) \
		$(EXPORT_INSTALLED) $(ORT_INSTALLED)
	$(PY) -m pytest -n 2 --dist loadscope

# The inner loop, under 3 minutes on 2 CPU cores: the unit tests (on TensorFlow), the notebooks'
# structure, the book's numbers, and one tiny VAE run on each backend.
FAST_TESTS := tests/test_layers_and_metrics.py tests/test_data.py tests/test_noise.py \
	tests/test_outputs.py tests/test_training.py tests/test_book_numbers.py \
	tests/test_notebooks.py tests/test_vae_lesson.py tests/test_backends.py
test-fast: $(INSTALLED) $(NOTEBOOKS_INSTALLED) $(BOOK_INSTALLED) $(BACKENDS_INSTALLED)
	$(PY) -m pytest -n 2 --dist loadscope $(FAST_TESTS) \
		-k "not kernel and (not test_backends.py or runs_on_the_backend and VariationalAutoEncoder_tf2)"

figures: vae dae cvae sparse contractive ae pretrain mae vqvae

# notebooks/<Lesson>.ipynb from each lesson's source, without outputs (tests/test_notebooks.py
# fails when a committed one differs from what this writes).
notebooks: $(NOTEBOOKS_INSTALLED)
	$(PY) scripts/make_notebooks.py

# The book: from book/ into site/ (not committed), with no network: code is included from the
# lessons, figures from figures/, the notebooks are copied in as downloads, and MathJax comes
# bundled. Read it with `python -m http.server -d site`. It builds into site.new and replaces
# site/ only when the build succeeds: a failed build leaves the last good site/ as it was.
# The VAE and CVAE chapters' latent explorers run the lessons' decoders in the page:
# scripts/build_explorer.py exports them to ONNX, with the test digits' codes, into
# EXPLORER_DATA, and the book copies those and ONNX Runtime Web into the site. Their models come
# from models/ (make vae, make cvae and make figures write it); for a lesson it lacks, as on a
# fresh clone, the lesson is first trained with its defaults into build/lessons/ (about a minute
# and a half each on 2 CPU cores), which leaves the committed figures/ and results/ alone.
# EXPLORER_MODELS="DIR/models models" takes each lesson's models from the first of those folders
# that has them (here a run with --out DIR), and trains nothing; where none has them, the book
# is built without that explorer, and its chapter says how to get one. (tests/test_site.py runs
# this recipe with BOOK_DIR and SITE_DIR set to a small book of its own.)
BOOK_DIR := book
SITE_DIR := site
EXPLORER_MODELS := models build/lessons/models
EXPLORER_DATA := build/explorer
ifeq ($(origin EXPLORER_MODELS),file)
EXPLORER_TRAINED := \
	$(if $(wildcard models/vae_decoder.keras),,build/lessons/models/vae_decoder.keras) \
	$(if $(wildcard models/cvae_decoder.keras),,build/lessons/models/cvae_decoder.keras)
endif
site: $(BOOK_INSTALLED) $(EXPORT_INSTALLED) $(ORT_INSTALLED) $(EXPLORER_TRAINED)
	rm -rf $(SITE_DIR).new
	$(PY) scripts/build_explorer.py --models $(EXPLORER_MODELS) --out $(EXPLORER_DATA)
	AUTOENCODERS_EXPLORER_DATA=$(EXPLORER_DATA) \
		$(PY) -m sphinx -b html -E -W --keep-going -q $(BOOK_DIR) $(SITE_DIR).new \
		|| { rm -rf $(SITE_DIR).new; exit 1; }
	rm -rf $(SITE_DIR) && mv $(SITE_DIR).new $(SITE_DIR)

# The lessons the explorers need, trained with their defaults where models/ has none.
build/lessons/models/vae_decoder.keras: | $(INSTALLED)
	$(PY) VariationalAutoEncoder_tf2.py --out build/lessons
build/lessons/models/cvae_decoder.keras: | $(INSTALLED)
	$(PY) ConditionalVAE.py --out build/lessons

# JAX and PyTorch, for KERAS_BACKEND=jax or torch (the book, Backends).
backends: $(BACKENDS_INSTALLED)

# Seconds per epoch and peak memory of every lesson on every backend against plain Keras on the
# same backend, and of the VAE against plain PyTorch, on full-size data (results/bench.json).
# Not part of `make test`.
bench: $(INSTALLED) $(BACKENDS_INSTALLED)
	$(PY) benchmarks/bench.py

$(INSTALLED): requirements.txt requirements-core.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --disable-pip-version-check -r requirements.txt
	touch $@

$(NOTEBOOKS_INSTALLED): requirements-notebooks.txt | $(INSTALLED)
	$(PY) -m pip install --disable-pip-version-check -r requirements-notebooks.txt
	touch $@

$(BOOK_INSTALLED): requirements-book.txt | $(INSTALLED)
	$(PY) -m pip install --disable-pip-version-check -r requirements-book.txt
	touch $@

$(BACKENDS_INSTALLED): requirements-backends.txt | $(INSTALLED)
	$(PY) -m pip install --disable-pip-version-check -r requirements-backends.txt
	touch $@

$(EXPORT_INSTALLED): requirements-export.txt | $(INSTALLED)
	$(PY) -m pip install --disable-pip-version-check -r requirements-export.txt
	touch $@

# ONNX Runtime Web, as book/package-lock.json pins it, into book/node_modules (npm writes the
# stamp, node_modules/.package-lock.json, itself); its install scripts are not needed.
$(ORT_INSTALLED): book/package.json book/package-lock.json
	@command -v npm >/dev/null || { echo "make: the book's latent explorers need ONNX Runtime \
	Web from npm, and npm is not installed (apt-get install nodejs npm)" >&2; exit 1; }
	cd book && npm ci --ignore-scripts --no-audit --no-fund
	touch $@

clean:
	rm -rf $(VENV) models checkpoints site site.new build book/node_modules .pytest_cache

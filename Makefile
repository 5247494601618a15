# Everything a fresh clone needs: `make demo` runs the main job, `make test` the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= test,spark,sim,chunked

.PHONY: install demo test bench lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

install: $(VENV)/.installed

# Deconvolve the bundled sf_deconvolve example; writes results/example_* (arrays, run record,
# cost curve and gallery; `galdecon show results/example` draws the figures again).
demo: install
	mkdir -p results
	$(BIN)/galdecon deconvolve -i data/sf_deconvolve_example/example_image_stack.npy \
	    -p data/sf_deconvolve_example/example_psfs.npy -o results/example --overwrite

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/iteration.py

lint: install
	$(BIN)/python -m pip install --quiet ruff
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf results .pytest_cache

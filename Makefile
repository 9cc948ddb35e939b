# normtx: two commands do everything on a fresh machine with python3 (3.10+).
#   make demo   set up .venv and run the main job (a real training run; table + plot)
#   make test   set up .venv, lint, and run the test suite
#   make docs   build the API reference into docs/_build/html (warnings are errors)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.normtx-installed
# Two pytest workers suit the 2-core CI machine; override with `make test PYTEST_WORKERS=auto`.
PYTEST_WORKERS ?= 2

.PHONY: demo test lint docs bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-install only when the package metadata changes.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m examples.demo

lint: $(STAMP)
	$(PY) -m ruff check normtx tests benchmarks examples docs
	$(PY) -m ruff format --check normtx tests benchmarks examples docs

test: $(STAMP) lint
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 $(PY) -m pytest -n $(PYTEST_WORKERS) --timeout=900

docs: $(STAMP)
	$(PY) -m sphinx -b html -W --keep-going docs docs/_build/html

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

clean:
	rm -rf $(VENV) demo_output docs/_build .pytest_cache .ruff_cache

# luxor-etl — `make demo` runs the whole pipeline locally, `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: install demo test unit integration lint format bench chaos clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,demo]'
	touch $(INSTALLED)

install: $(INSTALLED)

demo: install
	$(VENV)/bin/luxor-etl demo

test: install
	$(PY) -m pytest -q

unit: install
	$(PY) -m pytest -q tests/unit

integration: install
	$(PY) -m pytest -q tests/integration

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

chaos: install
	$(PY) -m bench.chaos --ticks 200 --fault-rate 0.3

# Needs PostgreSQL and Redis on localhost; BENCH_ARGS=--skip-1m for a shorter run.
bench: install
	$(PY) -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) demo-data .pytest_cache .ruff_cache

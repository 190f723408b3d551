# dopax developer entry points. Both targets build .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit docs bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test,examples,docs]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/lalonde.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

typecheck: $(STAMP)
	$(BIN)/mypy

# Test files are shared out whole among TEST_WORKERS processes (pytest-xdist),
# so a module's fixtures are built once.
TEST_WORKERS ?= 2

unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadfile

test: lint typecheck unit

# The documentation site, warnings (broken cross-references included) as errors.
docs: $(STAMP)
	$(BIN)/python -m sphinx -b html -n -W --keep-going -q docs docs/_build/html

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache docs/_build

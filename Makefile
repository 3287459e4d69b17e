# Every target that runs code first builds .venv itself (torch CPU wheel first, then the project), so each
# command works on a fresh machine with only Python 3.11 and pip.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test test-fast compare lint format check-codestyle docs results results-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch first: an unpinned torch would pull several GB of CUDA packages
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,benchmarks,ray,fast,docs]"
	touch $(STAMP)

setup: $(STAMP)

# The whole test suite with the accelerator (about 12 minutes on 2 cores), then the quick tests again with it disabled
# (SB3_TRUST_ACCEL=0: everything on the reference path, about 4 minutes)
test: $(STAMP)
	$(BIN)/python -m pytest tests -q -n 2 --durations=15
	SB3_TRUST_ACCEL=0 $(BIN)/python -m pytest tests -q -n 2 -m "not expensive"

# Without the learning tests
test-fast: $(STAMP)
	$(BIN)/python -m pytest tests -q -n 2 -m "not expensive" --durations=15

# The main job: a short side-by-side of our algorithms against SB3 PPO and sb3-contrib TRPO (scores and speed)
compare: $(STAMP)
	$(BIN)/python -m benchmarks compare

# ruff, and the import contracts of pyproject.toml (the layering: zoo > algorithms > accelerator > common)
lint: $(STAMP)
	$(BIN)/ruff check sb3_trust tests benchmarks
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff check --select I --fix sb3_trust tests benchmarks
	$(BIN)/ruff format sb3_trust tests benchmarks

check-codestyle: $(STAMP)
	$(BIN)/ruff format --check sb3_trust tests benchmarks

# The documentation site (docs/), every warning an error; open docs/_build/html/index.html
docs: $(STAMP)
	$(BIN)/sphinx-build -E -W --keep-going -b html docs docs/_build/html

# The results page (benchmarks/RESULTS.md and its plots) from the committed result files; results-check (run by CI)
# fails when the committed page is not what they and the current code give (new results, or code that stales them)
results: $(STAMP)
	$(BIN)/python -m benchmarks report

results-check: $(STAMP)
	$(BIN)/python -m benchmarks report --check

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache docs/_build

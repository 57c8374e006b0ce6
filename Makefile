# make demo: set up .venv and run the whole pipeline on the built-in demo pair (runs/demo/).
# make test: set up .venv and run the test suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test bench seeds lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dtl-ray demo

test: $(STAMP)
	RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.1 $(PY) -m pytest -q -p no:cacheprovider tests

# performance figures, Ray against plain PyTorch (runs/perf/perf.json); see docs/performance.md
bench: $(STAMP)
	$(VENV)/bin/dtl-ray perf

seeds: $(STAMP)
	$(PY) scripts/check_seeds.py --seeds 0 1 2

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf runs

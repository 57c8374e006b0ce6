# make demo: set up .venv and run the whole pipeline on the built-in demo pair (runs/demo/).
# make test: set up .venv and run the test suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-fast perf bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dtl-ray demo

test: $(STAMP)
	RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.1 $(PY) -m pytest -q -p no:cacheprovider --durations=15 tests

# the inner loop: everything that starts no Ray pipeline (under a minute)
test-fast: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow" tests

# performance figures, Ray against plain PyTorch (runs/perf/perf.json); see docs/performance.md
perf: $(STAMP)
	$(VENV)/bin/dtl-ray perf

# the method and every baseline over seeds 0, 1, 2 on the demo pair (runs/bench/bench.{json,html})
bench: $(STAMP)
	$(VENV)/bin/dtl-ray bench --seeds 3

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf runs

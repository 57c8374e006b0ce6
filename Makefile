# make demo: set up .venv and run the whole pipeline on the built-in demo pair (runs/demo/).
# make test: set up .venv and run the test suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
BASE := $(VENV)/.installed-base
PIP := $(PY) -m pip install -q --no-compile -c constraints.txt

.PHONY: demo test test-cluster test-fast perf scale bench lint clean

# bytecode is compiled on every core afterwards (pip compiles on one; about 25 s less); -qq and
# `|| true`: a few of torch's test helpers are Python 3.12 syntax and never imported
# `make demo` installs what the pipeline needs; the test tools come on top for `make test`
$(BASE): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -e .
	$(PY) -m compileall -qq -j 0 $(VENV)/lib > /dev/null || true
	touch $(BASE)

$(STAMP): $(BASE)
	$(PIP) -e '.[test]'
	$(PY) -m compileall -qq -j 0 $(VENV)/lib > /dev/null || true
	touch $(STAMP)

demo: $(BASE)
	$(VENV)/bin/dtl-ray demo

test: $(STAMP)
	RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.1 $(PY) -m pytest -q -p no:cacheprovider --durations=15 \
		-m "not cluster" tests

# the simulated autoscaling GPU cluster (about 2 minutes; .ci/run runs it after `make test`)
test-cluster: $(STAMP)
	RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.1 $(PY) -m pytest -q -p no:cacheprovider -m cluster tests

# the inner loop: everything that starts no Ray pipeline (under a minute)
test-fast: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow and not cluster" tests

# performance figures, Ray against plain PyTorch (runs/perf/perf.json); see docs/performance.md
perf: $(STAMP)
	$(VENV)/bin/dtl-ray perf

# growth: the pipeline at 1x and 10x the demo's size, object store capped at 300 MB
# (runs/scale/scale.json); see docs/scaling.md
scale: $(STAMP)
	$(VENV)/bin/dtl-ray scale

# the method and every baseline over seeds 0, 1, 2 on the demo pair (runs/bench/bench.{json,html})
bench: $(STAMP)
	$(VENV)/bin/dtl-ray bench --seeds 3

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf runs

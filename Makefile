# mlfastsim: `make demo` and `make test` each create .venv if missing and install everything first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-readme bench lint install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU build of torch first: the project's own range then installs nothing more.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mlfastsim demo --output demo_out

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# Every command block of README.md, in order, in a fresh directory, at MLFASTSIM_QUICK=1 sizes (slow:
# 14 min measured on a shared 2-core machine, load ~7).
test-readme: $(STAMP)
	$(PY) -m pytest -q -m slow --timeout 7200 tests/e2e/test_readme.py

bench: $(STAMP)
	@for script in benchmarks/bench_*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf demo_out runs .pytest_cache .ruff_cache

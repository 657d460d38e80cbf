# The README's two commands: `make demo` and `make test` (ruff, the docs in strict mode, pytest); both set up .venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,demo]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m tfdisguise.demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mkdocs build --strict -d build/site   # not -q: with -q, mkdocs 1.6 does not abort on warnings
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/disguise_speed.py

clean:
	rm -rf $(VENV) demo_out build/site *.egg-info

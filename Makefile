# ml4m: two commands for a fresh machine.
#   make demo   create .venv, install ml4m, run `ml4m quickstart`
#   make test   create .venv, install ml4m with test, approx (faiss, numba) and xtb (tblite)
#               extras, run the suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch first, pinned: this installs the CPU build that lies on the machine's disk
# instead of a multi-GB CUDA build pulled in as a dependency.
TORCH  := torch==2.13.0

.PHONY: demo test install install-test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[test,approx,xtb]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/ml4m quickstart -o quickstart_out

test: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -n 2 -q tests

clean:
	rm -rf $(VENV) quickstart_out build *.egg-info src/*.egg-info

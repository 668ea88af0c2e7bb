# The two set-up commands are `make demo` and `make test`; both create/update .venv first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.vidret-installed

.PHONY: demo test venv lint clean

venv: $(STAMP)

# Reinstall whenever the dependency list or the pinned versions change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -U pip
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vidret quickstart --config configs/synthetic.yaml

# Format check, the wide ruff rule set and the type checker (strict on config, storage, model, diffusion,
# features; basic elsewhere: see [tool.mypy] in pyproject.toml).
lint: $(STAMP)
	$(VENV)/bin/ruff format --check -q platform tests benchmarks jobs
	$(VENV)/bin/ruff check -q platform tests benchmarks jobs
	$(VENV)/bin/mypy

# Two pytest-xdist workers, a whole test file on one worker (its module fixtures are built once); the long
# benchmark smoke runs have a file each. See "Development" in README.md for the measured wall time.
test: $(STAMP) lint
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache

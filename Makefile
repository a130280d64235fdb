# `make test` sets up .venv if needed, then runs the test suite on CPU.
PY := .venv/bin/python

.PHONY: install test

install:
	bash install_requirements.sh

test: install
	$(PY) -m pytest -q tests

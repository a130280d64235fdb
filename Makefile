# `make demo` and `make test` set up .venv if needed (install_requirements.sh), then run the
# whole pipeline on the built-in synthetic corpus / the test suite, on CPU.
PY := .venv/bin/python

.PHONY: install demo test

install:
	bash install_requirements.sh

demo: install
	$(PY) demo.py

# two workers for the two cores the suite is sized for (-n 0 runs it in one process)
test: install
	$(PY) -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder tests

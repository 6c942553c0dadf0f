# Two commands do everything: `make demo` runs the system, `make test` runs every test.
PYTHON ?= python3
.PHONY: install demo demo-stop test test-fast lint schemas bench-pipeline bench-api bench-classifier

install:
	bash scripts/install.sh

demo:
	bash scripts/demo.sh

demo-stop:
	$(PYTHON) scripts/services.py --state-dir .services/demo stop all

test:
	bash scripts/test.sh

# Quick iteration: unit tests only, no services, no install.
test-fast:
	$(PYTHON) -m pytest -q tests/unit

lint:
	bash scripts/lint.sh

schemas:
	$(PYTHON) -m schemas.generate

bench-pipeline:
	bash scripts/bench.sh pipeline

bench-api:
	bash scripts/bench.sh api

bench-classifier:
	$(PYTHON) bench/classifier.py

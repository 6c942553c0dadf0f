# Two commands do everything: `make demo` runs the system, `make test` runs every test.
PYTHON ?= python3
.PHONY: install demo demo-stop test test-fast lint lock lock-upgrade schemas bench-pipeline bench-api bench-classifier soak bench-scale

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

# requirements.lock: the runtime dependencies of pyproject.toml pinned with hashes, for the
# image (pip install --require-hashes). Resolved for Python 3.11 on every platform; `lock`
# keeps the current pins where they still fit, `lock-upgrade` moves to the newest.
LOCK = $(PYTHON) -m uv pip compile pyproject.toml --quiet --generate-hashes --universal \
	--python-version 3.11 --custom-compile-command "make lock" --output-file requirements.lock

lock:
	$(LOCK)

lock-upgrade:
	$(LOCK) --upgrade

schemas:
	$(PYTHON) -m schemas.generate

bench-pipeline:
	bash scripts/bench.sh pipeline

bench-api:
	bash scripts/bench.sh api

# Throughput of 1, 2 and 3 consumer processes in one group (docs/PERFORMANCE.md, Scale-out).
bench-scale:
	bash scripts/bench.sh scale

bench-classifier:
	$(PYTHON) bench/classifier.py

# Soak: 2,000,000 events at full speed under a steady API read load, memory sampled, final
# state checked exactly (docs/RELIABILITY.md); own Redis and Kafka. ARGS=... passes options.
soak:
	bash scripts/soak.sh $(ARGS)

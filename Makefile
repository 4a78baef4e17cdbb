# otel-blocksnoop: every target installs what it needs first (scripts/setup.sh
# is idempotent), so each works on a fresh Debian 12 machine, as root.

VENV := .venv
PY := $(VENV)/bin/python
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")

.PHONY: setup docker-setup pythons free-threaded demo test lint unit integration test-containers bench screenshot clean

setup:
	@bash scripts/setup.sh

## docker-setup: the Docker engine (started if none answers, log in
## /var/log/otel-blocksnoop-dockerd.log) and a debian:bookworm-slim base built
## here with debootstrap, since no image registry is reachable
docker-setup:
	@bash scripts/docker-setup.sh

## pythons: CPython 3.14 and 3.15 for the tests' target apps, in a Debian sid root
## made once with debootstrap and cached under ~/.cache/otel-blocksnoop/roots, and a
## free-threaded CPython 3.14t built from source once into /opt/cpython-3.14t
pythons: free-threaded
	@bash scripts/sid-pythons.sh

## free-threaded: CPython 3.14.7 --disable-gil with the test apps' packages, built once
## (~5 min) from the source tree at $CPYTHON_SOURCE or cached under ~/.cache/otel-blocksnoop/src
free-threaded:
	@bash scripts/free-threaded-python.sh

## demo: a sample asyncio app that blocks its loop, watched from its start, exporting
## to a real OpenTelemetry collector (rotel) on 127.0.0.1; shows what the collector got
demo: setup
	$(PY) examples/demo.py

## test: lint, type-check, then every test (integration tests need root and the
## 3.14/3.15 root, which pythons makes; the container tests a Docker engine, which
## docker-setup provides)
test: setup lint docker-setup pythons
	$(PY) -m pytest

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

unit: setup
	$(PY) -m pytest tests/unit

integration: setup pythons
	$(PY) -m pytest tests/integration

## test-containers: the images, docker-compose.yml and the error hints with a real engine
test-containers: setup docker-setup
	$(PY) -m pytest -m containers tests/containers

## screenshot: docs/report.png, the README's picture of the HTML report, taken by its
## browser test from a real run
screenshot: setup
	BLOCKSNOOP_SCREENSHOT=docs/report.png $(PY) -m pytest -q tests/integration/test_report.py

## bench: accuracy and overhead benchmarks; results go to bench/results/
bench: setup
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

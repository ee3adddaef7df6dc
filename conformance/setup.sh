#!/usr/bin/env bash
# Installs the client libraries of the conformance check into this folder: a Python virtual
# environment in .venv (from PyPI) and node_modules (from npm). Idempotent.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
npm install --silent --no-audit --no-fund

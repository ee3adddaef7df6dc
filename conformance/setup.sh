#!/usr/bin/env bash
# Installs the client libraries of the conformance check into this folder: a Python virtual
# environment in .venv (from PyPI), node_modules (from npm) and the fhir-sdk program (from
# crates.io, built in fhir-sdk/target). Idempotent, and safe to run from
# several test processes at once (they take turns on a lock).
set -euo pipefail
cd "$(dirname "$0")"
exec 9>.setup.lock
flock 9
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
npm install --silent --no-audit --no-fund
# The Rust client fhir-sdk (crates.io), in its own Cargo project so that Braid's build never
# compiles its generated models.
cargo build --quiet --manifest-path fhir-sdk/Cargo.toml

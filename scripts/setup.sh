#!/usr/bin/env bash
# Create .venv and install slimformer with its test tools. torch is installed first and pinned,
# so pip uses the CPU build on this machine instead of pulling a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check "torch==2.13.0"
.venv/bin/pip install -q --disable-pip-version-check -e ".[dev]"

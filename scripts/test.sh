#!/usr/bin/env bash
# The README's test command: installs what the tests need, then runs the linters and the tests.
# torch==2.13.0 first (a CPU build); the project itself only asks for torch>=2.4.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --disable-pip-version-check torch==2.13.0
python -m pip install -q --disable-pip-version-check -e ".[test]"
echo "== ruff"
ruff check .
echo "== import layers (DESIGN.md)"
lint-imports
echo "== pytest"
python -m pytest -q "$@"

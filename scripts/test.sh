#!/usr/bin/env bash
# The README's test command: installs what the tests need, then runs the linters and the tests.
# torch==2.13.0 first (a CPU build); the project itself only asks for torch>=2.4.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --disable-pip-version-check torch==2.13.0
# the zoo extra's torchvision, pinned to the release built for torch 2.13 so that pip keeps it
python -m pip install -q --disable-pip-version-check torchvision==0.28.0
python -m pip install -q --disable-pip-version-check -e ".[test,lab,zoo,docs]"
python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0' and \
  f'torch {torch.__version__} replaced 2.13.0')"
# the report is checked in a real headless browser (Debian's chromium)
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
    && [ "$(id -u)" = 0 ]; then
  echo "== installing chromium for the report test"
  { apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; } \
    >/dev/null 2>&1 || echo "chromium could not be installed; the browser test will fail in CI"
fi
echo "== ruff"
ruff check .
echo "== import layers (DESIGN.md)"
lint-imports
echo "== docs: the site, strict (a broken reference or link fails; its snippets run in pytest)"
bash scripts/docs.sh build --site-dir "$(mktemp -d)"
echo "== pytest"
python -m pytest -q "$@"

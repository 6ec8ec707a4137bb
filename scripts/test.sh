#!/usr/bin/env bash
# The README's test command: installs what the tests need, then runs the linters and the tests.
# torch==2.13.0 first (a CPU build); the project itself only asks for torch>=2.4.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --disable-pip-version-check torch==2.13.0
# the zoo extra's torchvision, pinned to the release built for torch 2.13 so that pip keeps it
python -m pip install -q --disable-pip-version-check torchvision==0.28.0
python -m pip install -q --disable-pip-version-check -e ".[test,lab,zoo,docs,ray]"
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
# the Ray tests start a Ray cluster: never here (Ray's processes reach each other over the
# machine's interface address, and these machines may send traffic to loopback only), but in
# a fresh network, PID and mount namespace that holds only loopback: Ray finds no other
# address, and nothing it starts can outlive the namespace
python -m pytest -q -m "not ray" "$@"
echo "== pytest: the Ray engine, in a network namespace holding only loopback"
if unshare -n -p -f --mount-proc true 2>/dev/null; then
  unshare -n -p -f --mount-proc bash -c \
    'ip link set lo up && python -m pytest -q -p no:cacheprovider -m ray tests/test_ray.py; exit $?'
else
  echo "SKIPPED: the Ray tests need a network namespace (unshare -n, as root); none could be"
  echo "made here, so no Ray cluster is started"
fi

#!/usr/bin/env bash
# The README's main-job command: installs normlab with the lab's extra, then runs the lab on its
# built-in data and writes the report to ./normlab-report (about 100 s on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --disable-pip-version-check torch==2.13.0
python -m pip install -q --disable-pip-version-check -e ".[lab]"
exec normlab lab "$@"

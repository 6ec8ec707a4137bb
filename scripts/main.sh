#!/usr/bin/env bash
# The README's main-job command: installs normlab, then runs the main job. Until `normlab lab`
# lands, the main job is the quick CPU benchmark of every kind against torch.nn.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --disable-pip-version-check torch==2.13.0
python -m pip install -q --disable-pip-version-check -e .
exec normlab bench --quick "$@"

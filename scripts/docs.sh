#!/usr/bin/env bash
# The documentation site (MkDocs + Material + mkdocstrings; mkdocs.yml, pages under docs/):
#   bash scripts/docs.sh [build]      site/ with warnings as errors (a broken reference or link
#                                     fails), as CI builds it
#   bash scripts/docs.sh serve        http://127.0.0.1:8000, rebuilt on every edit
#   bash scripts/docs.sh snapshot DIR the verdicts of a finished `normlab lab --out DIR` into
#                                     docs/lab-snapshot.json, which the claims page shows
# Installs what it needs first (torch, then normlab with the docs and lab extras) unless this
# tree's normlab and the docs tools already import.
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-build}"
[ $# -gt 0 ] && shift

ready() {
  python - <<'PY' 2>/dev/null
import pathlib, sys
import matplotlib, mkdocs, material, mkdocstrings_handlers.python, pytest, tqdm  # noqa: F401
import normlab
sys.exit(not pathlib.Path(normlab.__file__).resolve().is_relative_to(pathlib.Path("src").resolve()))
PY
}

if ! ready; then
  echo "== installing torch, then normlab[docs,lab]"
  python -m pip install -q --disable-pip-version-check torch==2.13.0
  python -m pip install -q --disable-pip-version-check -e ".[docs,lab]"
fi
export NO_MKDOCS_2_WARNING=1  # Material's notice about its successor, printed on every build

case "$what" in
  build) exec python -m mkdocs build --strict "$@" ;;
  serve) exec python -m mkdocs serve -a 127.0.0.1:8000 "$@" ;;
  snapshot)
    [ $# -eq 1 ] || { echo "usage: scripts/docs.sh snapshot DIR (a lab folder)" >&2; exit 2; }
    exec python - "$1" <<'PY'
import json, sys, time
from pathlib import Path

from normlab.results import read_rows, write_atomic

folder = Path(sys.argv[1])
try:
    summary = json.loads((folder / "summary.json").read_text())
    config = json.loads((folder / "config.json").read_text())
except (OSError, ValueError) as exc:
    sys.exit(f"scripts/docs.sh snapshot: {folder} is not a finished lab folder ({exc})")
rows, _ = read_rows(folder / "results.jsonl")
runs = [r for r in rows if r.get("kind") == "run"]
flags = [f"--{config['preset']}"] if config.get("preset") not in (None, "default") else []
flags += [f"--only {','.join(config['only'])}"] if config.get("only") else []
flags += [f"--{k}={v}" for k, v in sorted(config.get("overrides", {}).items())]
snapshot = {
    "command": " ".join(["normlab lab", *flags, f"--seeds {config.get('seeds')}"]),
    "date": time.strftime("%Y-%m-%d", time.gmtime(max(r["time"] for r in runs))),
    "env": runs[-1]["env"],
    "summary": summary,
}
write_atomic("docs/lab-snapshot.json", json.dumps(snapshot, indent=1) + "\n")
print(f"docs/lab-snapshot.json: {len(summary['claims'])} claims from {folder}")
PY
    ;;
  *) echo "usage: scripts/docs.sh [build|serve|snapshot DIR]" >&2; exit 2 ;;
esac

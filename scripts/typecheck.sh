#!/usr/bin/env bash
# mypy, strict, over the whole package in src/ (generated protobuf code exempt; see pyproject.toml).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
MYPYPATH="$root/src" python -m mypy --config-file "$root/pyproject.toml" -p fedlora

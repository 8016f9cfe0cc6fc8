#!/usr/bin/env bash
# mypy over the package as installed from src/ (strict on fedlora.crypto; see pyproject.toml).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
MYPYPATH="$root/src" python -m mypy --config-file "$root/pyproject.toml" -p fedlora

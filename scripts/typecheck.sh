#!/usr/bin/env bash
# mypy (strict on fedlora.crypto) over the real import namespace. The top-level folders are
# mapped onto fedlora.* by setuptools' package-dir, which mypy cannot follow, so build a view of
# the namespace from symlinks and point mypy at it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
view="$root/build/typecheck"
rm -rf "$view" && mkdir -p "$view/fedlora"
for f in "$root"/fedlora/*.py; do ln -s "$f" "$view/fedlora/"; done
for pkg in crypto client coordinator; do ln -s "$root/$pkg" "$view/fedlora/$pkg"; done
ln -s "$root/fedlora/v1" "$view/fedlora/v1"
cd "$view"
python -m mypy --config-file "$root/pyproject.toml" -p fedlora

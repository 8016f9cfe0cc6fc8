#!/usr/bin/env bash
# Regenerate src/fedlora/v1/*_pb2.py, *_pb2_grpc.py and *.pyi from proto/fedlora/v1/*.proto.
# The generated files are committed and never edited by hand; tests/unit/foundation/test_protos.py fails
# when they are stale. Usage: bash scripts/gen_protos.sh [OUTPUT_ROOT]   (default: src/)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/src}
py=${PYTHON:-$root/.venv/bin/python}
mkdir -p "$out/fedlora/v1"
cd "$root/proto"
# protoc-gen-mypy lives next to the interpreter in the virtual environment.
PATH="$(dirname "$py"):$PATH" "$py" -m grpc_tools.protoc -I. --python_out="$out" --grpc_python_out="$out" --mypy_out="$out" fedlora/v1/*.proto
printf '"""Generated protobuf and gRPC code for package fedlora.v1 (scripts/gen_protos.sh)."""\n' > "$out/fedlora/v1/__init__.py"

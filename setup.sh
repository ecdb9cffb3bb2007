#!/usr/bin/env bash
# One-command set-up for gvf.
#   CPU machine: installs the CPU build of torch (never CUDA wheels), then gvf and its requirements.
#   GPU machine: keeps the torch that is already installed, then gvf, its requirements and gsplat.
# Usage: bash setup.sh   (env: TORCH_VERSION, default 2.13.0; TORCH_INDEX_URL for a CPU wheel index)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

has_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

if "$PY" -c "import torch" >/dev/null 2>&1; then
    echo "[setup] keeping installed torch $("$PY" -c 'import torch; print(torch.__version__)')"
elif has_gpu; then
    echo "[setup] GPU found but no torch: install the CUDA build of torch for your driver first" >&2
    exit 1
else
    echo "[setup] installing CPU torch==${TORCH_VERSION}"
    # Set TORCH_INDEX_URL to PyTorch's CPU wheel index where plain PyPI would serve a CUDA build.
    "$PY" -m pip install -q "torch==${TORCH_VERSION}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
fi

# Pin the installed torch so that no dependency can swap it for another build.
constraints=$(mktemp)
"$PY" -c "import torch; print('torch==' + torch.__version__)" > "$constraints"
"$PY" -m pip install -q -c "$constraints" -e ".[dev]"
if has_gpu; then
    "$PY" -m pip install -q -c "$constraints" "gsplat>=1.5,<1.6" || echo "[setup] warning: gsplat not installed; the torch rasterizer will be used" >&2
fi
rm -f "$constraints"
"$PY" -c "import gvf, torch; print(f'[setup] gvf {gvf.__version__} ready (torch {torch.__version__}, cuda={torch.cuda.is_available()})')"

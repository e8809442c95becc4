#!/usr/bin/env bash
# .venv-lerobot: LeRobot's dataset library (lerobot-dataset) for `evo1-ros convert --format lerobot`.
# It needs a venv of its own: it pins huggingface-hub < 0.36 (transformers 5, in .venv, needs >= 1)
# and imports torchvision, whose PyPI build does not load beside the CPU build of torch in .venv.
# LEROBOT_TORCH / LEROBOT_TORCHVISION pick another matching pair (e.g. your CUDA machine's).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv-lerobot/bin/python ] || "$PY" -m venv .venv-lerobot
.venv-lerobot/bin/python -m pip install -q "torch==${LEROBOT_TORCH:-2.14.1}" \
    "torchvision==${LEROBOT_TORCHVISION:-0.29.1}" "lerobot-dataset==0.4.4"
echo "[setup_lerobot] ready: $(.venv-lerobot/bin/python -c 'import ledataset, torch; print("lerobot-dataset with torch", torch.__version__)')"

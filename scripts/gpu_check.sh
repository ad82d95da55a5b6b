#!/usr/bin/env bash
# The GPU check, the one script a GPU machine runs (in well under 5 minutes): tiny Idefics3 and LLaVA (and Qwen2-VL
# where torchvision loads) LoRA fine-tune steps on CUDA with bf16, the transformers backend's throughput, and the
# nightly job on a handful of rows with its VLM actor on the GPU (vLLM where installed): scripts/gpu_check.py.
#
#   bash scripts/gpu_check.sh [steps]                 # on a machine with CUDA
#   DEVICE=cpu bash scripts/gpu_check.sh [steps]      # the same script on CPU (this project's CI machine)
#
# It runs in the current Python environment (a project install, or a GPU image with torch and transformers). An
# offline machine without Ray, pydantic or peft gets them from a folder of wheels: WHEELS=DIR installs DIR/*.whl
# into a temporary folder on the path first (docs/deliberator.md, "GPU check").
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS="${1:-20}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
PY="${PYTHON:-python3}"
if [[ -n "${WHEELS:-}" ]]; then
    "$PY" -m pip install -q --no-index --no-deps --target "$WORK/site" "$WHEELS"/*.whl
    export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
    export PATH="$WORK/site/bin:$PATH"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
"$PY" scripts/gpu_check.py --device "${DEVICE:-cuda}" --steps "$STEPS" --work "$WORK"

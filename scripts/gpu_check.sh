#!/usr/bin/env bash
# GPU check for the deliberator on a CUDA machine that has torch and transformers but no vLLM (and no Ray):
# a few R-VIT fine-tune steps of the tiny VLM on the GPU, then the transformers backend's throughput there.
# Usage (from the repository root): bash scripts/gpu_check.sh [steps]    -- finishes in well under 5 minutes.
# DEVICE=cpu bash scripts/gpu_check.sh 5 runs the same script on CPU (a dry run of the script itself).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS="${1:-40}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
python -m pip install -q "peft>=0.17" pyarrow pandas pyyaml pillow scikit-learn safetensors tokenizers 2>/dev/null || true
PYTHONPATH="$PWD" HF_HUB_OFFLINE=1 python - "$WORK" "$STEPS" "${DEVICE:-cuda}" <<'PY'
import sys, time
from pathlib import Path

import torch

from reasonrec.data import loaders, prepared, synthetic
from reasonrec.horizon import EvidenceHorizon
from reasonrec.vlm.backends.transformers_backend import TransformersDeliberator
from reasonrec.vlm.build import load
from reasonrec.prompts.templates import Prompt
from reasonrec.vlm.examples import ExamplesConfig, build_examples
from reasonrec.vlm.finetune import FinetuneConfig, base_folder, train

work, steps, device = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
if device == "cuda":
    assert torch.cuda.is_available(), "no CUDA device visible to torch"
    print(f"torch {torch.__version__}, device {torch.cuda.get_device_name(0)}")
sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
synthetic.write(synthetic.SyntheticConfig(users=400, items=120, seed=3), str(work / "raw"))
prepared.prepare(loaders.load(str(work / "raw"), "parquet"), str(work / "data"))
data = prepared.PreparedData(str(work / "data"))
horizon = EvidenceHorizon.fit(data.train.lengths, data.train.items, data.n_items)
config = FinetuneConfig(steps=steps, batch_size=16, log_every=10)
examples = build_examples(data, "train", horizon, {}, config.examples).to_pylist()
model, processor = load(base_folder(None, data, config, work / "base"))
summary = train(model, processor, examples, config, device=device)
print(f"fine-tune on {device}: {steps} steps x 16, loss {summary['loss_first']:.3f} -> {summary['loss_last']:.3f}, "
      f"{summary['seconds']}s ({summary['seconds'] / steps * 1000:.0f} ms/step)")
rows = build_examples(data, "test", horizon, {}, ExamplesConfig(seed=1), decision="answer",
                      tasks={"sequential": 1.0}).slice(0, 128).to_pylist()
prompts = [Prompt.from_row(r) for r in rows]
for batch_size in (1, 8, 32):
    backend = TransformersDeliberator(model, processor, batch_size=batch_size, device=device)
    backend.label_logprobs(prompts[:batch_size])  # warm-up
    sync()
    start = time.perf_counter()
    backend.label_logprobs(prompts)
    sync()
    seconds = time.perf_counter() - start
    print(f"transformers backend on {device}, batch {batch_size:>2d}: {len(prompts) / seconds:7.1f} prompts/s, "
          f"{sum(len(p.labels) for p in prompts) / seconds:8.1f} candidates/s")
PY

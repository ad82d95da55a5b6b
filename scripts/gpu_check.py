"""The GPU check (scripts/gpu_check.sh runs it): on a synthetic catalogue,
1. LoRA fine-tune steps of each tiny architecture (Idefics3, LLaVA-1.5; Qwen2-VL where torchvision loads) on the
   device, bf16 autocast on CUDA;
2. the transformers backend's throughput (prompts/s, candidates/s) at batch 1, 8 and 32;
3. the nightly job on a handful of rows with its VLM actor asking Ray for the device (vLLM where installed);
4. ``finetune-vlm`` as a cluster runs it: LoRA through Ray Train from a given LLaVA (and Qwen2-VL) checkpoint, one
   worker with a GPU on CUDA (bf16, gradient checkpointing), a checkpoint halfway, held-out HR@1 of the export.
Prints one line per figure and ends with "gpu check: ok"; any failure exits non-zero.

    python scripts/gpu_check.py [--device cuda|cpu] [--steps N] [--work DIR]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path

import torch


def say(line: str) -> None:
    print(line, flush=True)


def catalogue(work: Path):
    """The prepared synthetic catalogue and its evidence horizon."""
    from reasonrec.data import loaders, prepared, synthetic
    from reasonrec.horizon import EvidenceHorizon

    synthetic.write(synthetic.SyntheticConfig(users=300, items=120, seed=3, new_share=0.0), str(work / "raw"))
    prepared.prepare(loaders.load(str(work / "raw"), "parquet"), str(work / "data"))
    data = prepared.PreparedData(str(work / "data"))
    return data, EvidenceHorizon.fit(data.train.lengths, data.train.items, data.n_items)


def tools_bundle(data, uri: str) -> None:
    """A bundle with one small SASRec, trained in-process (the job's shortlist and the horizon come from it)."""
    from reasonrec.bundle import BundleWriter
    from reasonrec.horizon import HorizonConfig
    from reasonrec.train.loop import fit
    from reasonrec.train.tools import add_data_files, build_tool

    with BundleWriter(uri) as writer, tempfile.TemporaryDirectory() as tmp:
        tool, train, valid, refit_on = build_tool("sasrec", {"epochs": 3, "batch_size": 64}, data)
        fit(tool, train, valid, refit_on=refit_on)
        tool.save(f"{tmp}/sasrec")
        writer.add_tool("sasrec", f"{tmp}/sasrec", {}, tool.tasks)
        add_data_files(writer, data, HorizonConfig())
        writer.update(primary={"sequential": "sasrec"})
        writer.commit()


def fine_tune(data, horizon, architecture: str, device: str, steps: int, out: Path):
    """LoRA steps on the device from a tiny checkpoint of ``architecture``; returns the merged model's folder."""
    from reasonrec.vlm.build import TinyVLMConfig, build_tiny, save
    from reasonrec.vlm.examples import ExamplesConfig, build_examples
    from reasonrec.vlm.finetune import FinetuneConfig, add_lora, train

    titles = [t for t in data.table("items").column("title").to_pylist() if t]
    model, processor = build_tiny(titles, TinyVLMConfig(architecture=architecture, vocab_size=1024))
    config = FinetuneConfig(steps=steps, batch_size=8, lora_rank=8, lr=1e-2, log_every=max(1, steps // 2),
                            examples=ExamplesConfig(candidates=8, per_user=1, max_history=4))
    examples = build_examples(data, "train", horizon, {}, config.examples).to_pylist()
    model = add_lora(model, config.lora_rank, config.lora_alpha)
    summary = train(model, processor, examples, config, device=device)
    precision = "bf16 autocast" if device == "cuda" and config.bf16 else "float32"
    say(f"fine-tune {architecture:>8s} on {device} ({precision}, LoRA rank {config.lora_rank}): {steps} steps x "
        f"{config.batch_size}, loss {summary['loss_first']:.3f} -> {summary['loss_last']:.3f}, "
        f"{summary['seconds'] / steps * 1000:.0f} ms/step")
    save(model.merge_and_unload().to("cpu"), processor, out)
    return out


def throughput(data, horizon, folder: Path, device: str, batch_sizes=(1, 8, 32)) -> None:
    from reasonrec.prompts.templates import Prompt
    from reasonrec.vlm.backends.transformers_backend import TransformersDeliberator
    from reasonrec.vlm.build import load
    from reasonrec.vlm.examples import ExamplesConfig, build_examples

    rows = build_examples(data, "test", horizon, {}, ExamplesConfig(candidates=20, seed=1), decision="answer",
                          tasks={"sequential": 1.0}).slice(0, 128).to_pylist()
    prompts = [Prompt.from_row(r) for r in rows]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    model, processor = load(folder)
    for batch_size in batch_sizes:
        backend = TransformersDeliberator(model, processor, batch_size=batch_size, device=device)
        backend.label_logprobs(prompts[:batch_size])  # warm-up
        sync()
        start = time.perf_counter()
        backend.label_logprobs(prompts)
        sync()
        seconds = time.perf_counter() - start
        say(f"transformers backend ({model.config.model_type}) on {device}, batch {batch_size:>2d}: "
            f"{len(prompts) / seconds:7.1f} prompts/s, "
            f"{sum(len(p.labels) for p in prompts) / seconds:8.1f} candidates/s")


def nightly_job(data, bundle: str, folder: Path, device: str, work: Path) -> None:
    """The bundle gains the tuned VLM; a handful of requests through the nightly job, every row to the VLM, whose
    actor asks Ray for one GPU on CUDA (deliberator.device)."""
    import ray

    from jobs.nightly_score import NightlyJob, run
    from reasonrec import storage
    from reasonrec.batch.config import ScoreConfig
    from reasonrec.batch.requests import requests_for_split, write_requests
    from reasonrec.bundle import BundleWriter
    from reasonrec.vlm.deliberator import DeliberatorConfig

    with BundleWriter(bundle) as writer:
        writer.add_file("catalogue.parquet", storage.parquet_bytes(data.table("items")))
        writer.add_vlm(folder, {"base": "tiny idefics3", "lora_rank": 8, "config": {"examples": {"max_history": 4}}})
        writer.commit()
    requests = str(work / "requests")
    write_requests(requests_for_split(data, "test", "sequential", k=5).slice(0, 16), requests)
    score = ScoreConfig(mode="vlm-only", shortlist=8, deliberator=DeliberatorConfig(device=device))  # backend auto
    start = time.perf_counter()
    manifest = run(NightlyJob(requests, bundle, str(work / "results"), "2026-12-04", force=True, score=score))
    seconds = time.perf_counter() - start
    seen = ray.get(ray.remote(num_gpus=score.deliberator.resources()["num_gpus"])(visible).remote())
    assert manifest["rows_quarantined"] == 0 and manifest["vlm_calls_total"] == manifest["rows_out"] == 16, manifest
    say(f"nightly job: {manifest['rows_out']} rows, VLM calls {manifest['vlm_calls_total']}, backend auto, VLM "
        f"actor resources {score.deliberator.resources()} -> a worker with those resources sees {seen}; "
        f"{seconds:.0f}s")


def ray_train_fine_tune(data, bundle: str, architecture: str, device: str, steps: int, work: Path) -> None:
    """``reasonrec finetune-vlm --base CHECKPOINT [--gpu]``: the workers read the base themselves, LoRA, a checkpoint
    halfway through, the merged export committed to the bundle with its held-out HR@1 (the transformers backend
    over the exported folder)."""
    from reasonrec.train.vlm import finetune_vlm
    from reasonrec.vlm.build import TinyVLMConfig, build_tiny, save
    from reasonrec.vlm.examples import ExamplesConfig
    from reasonrec.vlm.finetune import FinetuneConfig

    base = work / f"base-{architecture}"
    titles = [t for t in data.table("items").column("title").to_pylist() if t]
    save(*build_tiny(titles, TinyVLMConfig(architecture=architecture, vocab_size=1024)), base)
    config = FinetuneConfig(steps=steps, batch_size=8, lora_rank=8, lr=1e-2, use_gpu=device == "cuda",
                            cpus_per_worker=1, eval_users=40, eval_task="sequential", log_every=max(1, steps // 2),
                            checkpoint_every=max(1, steps // 2), storage_path=str(work / "ray-train"),
                            examples=ExamplesConfig(candidates=8, per_user=1, max_history=4))
    vlm = finetune_vlm(data.uri, bundle, config, base=str(base))["vlm"]
    training, metrics = vlm["training"], vlm["metrics"]
    say(f"Ray Train fine-tune ({architecture} base, LoRA rank 8, {'1 GPU' if config.use_gpu else 'CPU'}): "
        f"{steps} steps x "
        f"{config.batch_size}, loss {training['loss_first']:.3f} -> {training['loss_last']:.3f} in "
        f"{training['seconds']}s; export HR@1 {metrics['HR@1_tuned']:.3f} (untuned {metrics['HR@1_untuned']:.3f}, "
        f"chance {metrics['chance']:.3f}, {metrics['users']} held-out users)")


def visible() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--work", help="working folder (default: a temporary one)")
    args = parser.parse_args()
    if args.device == "cuda":
        assert torch.cuda.is_available(), "no CUDA device visible to torch"
        say(f"torch {torch.__version__}, device {torch.cuda.get_device_name(0)}")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        data, horizon = catalogue(work)
        tuned = {a: fine_tune(data, horizon, a, args.device, args.steps, work / f"tuned-{a}")
                 for a in ("idefics3", "llava")}
        throughput(data, horizon, tuned["idefics3"], args.device)
        if not importlib.util.find_spec("ray"):
            raise SystemExit("ray is not installed: the nightly job cannot run (scripts/gpu_check.sh WHEELS=...)")
        import ray

        bundle = str(work / "bundle")
        tools_bundle(data, bundle)
        ray.init(num_cpus=4, num_gpus=1 if args.device == "cuda" else 0, include_dashboard=False,
                 log_to_driver=False)
        try:
            nightly_job(data, bundle, tuned["idefics3"], args.device, work)
            for architecture in ("llava", "qwen2_vl") if importlib.util.find_spec("torchvision") else ("llava",):
                ray_train_fine_tune(data, bundle, architecture, args.device, args.steps, work)
        finally:
            ray.shutdown()
        if importlib.util.find_spec("torchvision"):  # last: the one architecture CI's CPU stack cannot build
            tuned_qwen = fine_tune(data, horizon, "qwen2_vl", args.device, args.steps, work / "tuned-qwen2_vl")
            throughput(data, horizon, tuned_qwen, args.device, batch_sizes=(8,))
        else:
            say("qwen2_vl: not run, transformers builds its processor on torchvision, which is not installed here")
    say(json.dumps({"seconds": round(time.perf_counter() - start, 1)}))
    say("gpu check: ok")


if __name__ == "__main__":
    main()

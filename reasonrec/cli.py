"""``reasonrec`` command line: synth, prepare, train-tools, finetune-vlm, fit-planner, requests, score, evaluate,
report, serve, demo."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from reasonrec import storage


def _ray_init() -> None:
    import ray

    if not ray.is_initialized():
        # Connects to RAY_ADDRESS when set (``ray job submit``), else starts a local instance.
        ray.init(ignore_reinit_error=True)


def cmd_synth(args) -> dict:
    from reasonrec.data import synthetic

    config = synthetic.SyntheticConfig(users=args.users, items=args.items, seed=args.seed)
    info = synthetic.write(config, args.out)
    print(f"synthetic catalogue: {info} -> {args.out}")
    return info


def cmd_prepare(args) -> dict:
    from reasonrec.data import loaders, prepared

    raw = loaders.load(args.source, args.format)
    meta = prepared.prepare(raw, args.out, min_len=args.min_len, n_negatives=args.negatives, seed=args.seed)
    print(f"prepared {meta['dataset']}: {meta['users']} users, {meta['items']} items, "
          f"{meta['interactions']} interactions, {meta['evaluated_users']} evaluated -> {args.out}")
    return meta


def train_tools_config(args):
    from reasonrec.config import from_dict, load_yaml
    from reasonrec.train.tools import TrainToolsConfig

    values = load_yaml(args.config)
    if args.tools:
        values["tools"] = args.tools.split(",")
    for flag in ("workers", "cpus_per_worker", "threads", "storage_path"):
        if getattr(args, flag) is not None:
            values[flag] = getattr(args, flag)
    if args.epochs is not None:
        overrides = values.setdefault("overrides", {})
        for name in values.get("tools", TrainToolsConfig.tools):
            overrides.setdefault(name, {})["epochs"] = args.epochs
    return from_dict(TrainToolsConfig, values)


def cmd_train_tools(args) -> dict:
    from reasonrec.train.tools import train_tools

    config = train_tools_config(args)
    _ray_init()
    start = time.perf_counter()
    manifest = train_tools(args.data, args.bundle, config)
    print(f"bundle {manifest['version']} committed to {args.bundle} with tools {sorted(manifest['tools'])} "
          f"in {time.perf_counter() - start:.0f}s")
    return manifest


def finetune_config(args):
    from reasonrec.config import from_dict, load_yaml
    from reasonrec.vlm.finetune import FinetuneConfig

    values = load_yaml(args.config)
    for flag in ("steps", "warmup_steps", "batch_size", "lr", "lora_rank", "workers", "cpus_per_worker",
                 "eval_users", "storage_path", "seed"):
        if getattr(args, flag) is not None:
            values[flag] = getattr(args, flag)
    if args.gpu:
        values["use_gpu"] = True
    if args.noise is not None:
        values.setdefault("examples", {})["noise"] = args.noise
    return from_dict(FinetuneConfig, values)


def cmd_finetune_vlm(args) -> dict:
    from reasonrec.vlm.finetune import finetune_vlm

    config = finetune_config(args)
    _ray_init()
    return finetune_vlm(args.data, args.bundle, config, base=args.base)


def cmd_fit_planner(args) -> dict:
    from jobs.fit_planner import fit_planner_config
    from reasonrec.train.planner import fit_planner

    return fit_planner(args.data, args.bundle, fit_planner_config(args))


def cmd_report(args) -> dict:
    from reasonrec.report import ReportConfig, write_report

    config = ReportConfig(split=args.split, sweep_users=args.sweep_users, backend=args.vlm_backend)
    return write_report(args.run, args.data, args.out, config, bundle_uri=args.bundle)


def serve_config(args):
    from reasonrec.config import from_dict, load_yaml
    from reasonrec.serve.api import ServeConfig

    values = load_yaml(args.config)
    for flag in ("host", "port"):
        if getattr(args, flag) is not None:
            values[flag] = getattr(args, flag)
    if args.mode:
        values.setdefault("score", {})["mode"] = args.mode
    if args.vlm_backend:
        values.setdefault("score", {}).setdefault("deliberator", {})["backend"] = args.vlm_backend
    if args.default_proxy:
        values["high_throughput"] = False
    return from_dict(ServeConfig, values)


def cmd_serve(args) -> dict:
    import os

    from reasonrec.serve.api import high_throughput_env

    config = serve_config(args)
    # Before Ray Serve is imported (it reads its mode at import) and before a local Ray starts (its processes inherit
    # it); on a cluster, the cluster's own environment decides (cluster/, manifests/).
    os.environ.update(high_throughput_env(config))
    from ray import serve

    from actors.serve import build

    _ray_init()
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(build(config, storage.absolute(args.bundle)), name="reasonrec", route_prefix="/")
    url = f"http://{config.host}:{config.port}"
    mode = "high-throughput (HAProxy ingress)" if config.high_throughput else "default proxy"
    print(f"serving {args.bundle} at {url}/v1/recommend (OpenAPI: {url}/docs, health: {url}/healthz; "
          f"Serve mode: {mode}); Ctrl-C stops")
    if args.no_block:
        return {"url": url}
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
    return {"url": url}


def cmd_evaluate(args) -> dict:
    from reasonrec.bundle import Bundle
    from reasonrec.data.prepared import PreparedData
    from reasonrec.evaluate import evaluate_bundle, evaluate_results

    if (args.bundle is None) == (args.results is None):
        raise ValueError("evaluate needs exactly one of --bundle (score the tools) or --results (a committed run)")
    if args.results:
        from reasonrec.batch.commit import read_committed

        results = read_committed(storage.absolute(args.results), args.run_date)
        report = evaluate_results(results, PreparedData(args.data), args.task, args.split)
        print(f"committed results, {report['task']} ({report['results']} rows): "
              + "  ".join(f"{k} {v:.4f}" for k, v in report["metrics"].items()))
    else:
        report = evaluate_bundle(PreparedData(args.data), Bundle(args.bundle), args.task, args.split)
    if args.json:
        storage.write_json(args.json, report)
        print(f"wrote {args.json}")
    return report


def cmd_requests(args) -> dict:
    import pyarrow as pa

    from reasonrec.batch.requests import requests_for_split, write_requests
    from reasonrec.data.prepared import PreparedData

    import numpy as np
    import pyarrow.compute as pc

    data = PreparedData(args.data)
    tables = [requests_for_split(data, args.split, task, args.k, seed=args.seed) for task in args.tasks.split(",")]
    if args.users:  # the same seeded sample of users for every task
        users = tables[0].column("user_id").to_numpy(zero_copy_only=False)
        keep = set(users[np.random.default_rng(args.seed).permutation(len(users))[:args.users]])
        tables = [t.filter(pc.is_in(t.column("user_id"), pa.array(sorted(keep), pa.string()))) for t in tables]
    table = pa.concat_tables(tables)
    shards = write_requests(table, args.out, shard_rows=args.shard_rows)
    print(f"wrote {table.num_rows} requests ({args.tasks}, k={args.k}, {args.split} split) "
          f"in {len(shards)} shard(s) -> {args.out}")
    return {"rows": table.num_rows, "shards": shards}


def cmd_score(args) -> dict:
    from jobs.nightly_score import run

    return run(args)


def cmd_demo(args) -> dict:
    """The embedded default: synthetic catalogue -> prepare -> train tools -> fine-tune the VLM -> fit the planner
    -> nightly job (planner mode)."""
    start = time.perf_counter()
    root = args.out
    raw, data, bundle, requests, results = (storage.join(root, p)
                                            for p in ("raw", "data", "bundle", "requests", "results"))
    ns = argparse.Namespace
    cmd_synth(ns(out=raw, users=args.users, items=args.items, seed=args.seed))
    cmd_prepare(ns(source=raw, format="parquet", out=data, min_len=3, negatives=99, seed=12345))
    config = args.config or str(Path(__file__).parent / "configs" / "demo_tools.yaml")
    cmd_train_tools(ns(data=data, bundle=bundle, config=config, tools=None, workers=None,
                       cpus_per_worker=None, threads=None, storage_path=None, epochs=None))
    vlm_config = str(Path(__file__).parent / "configs" / "demo_vlm.yaml")
    vlm = cmd_finetune_vlm(ns(data=data, bundle=bundle, base=None, config=vlm_config, steps=args.vlm_steps,
                              warmup_steps=None, batch_size=None, lr=None, lora_rank=None, noise=None, workers=None,
                              cpus_per_worker=None, gpu=False, eval_users=None, storage_path=None, seed=None))["vlm"]
    planner = cmd_fit_planner(ns(data=data, bundle=bundle, tasks=None, users=None, tolerance=None, vlm_backend=None,
                                 config=None))["planner"]
    cmd_requests(ns(data=data, out=requests, split="test", tasks="sequential,direct", k=10, shard_rows=1000,
                    seed=0, users=None))
    manifest = cmd_score(ns(requests=requests, bundle=bundle, output=results, run_date=None, force=True,
                            batch_size=None, tool_actors=None, config=None, mode=None, vlm_backend=None,
                            shortlist=None))
    tools_eval = {task: cmd_evaluate(ns(data=data, bundle=bundle, results=None, run_date=None, task=task,
                                        split="test", json=storage.join(root, f"eval_{task}.json")))
                  for task in ("sequential", "direct")}
    batch_eval = {task: cmd_evaluate(ns(data=data, bundle=None, results=results, run_date=manifest["run_date"],
                                        task=task, split="test", json=None))
                  for task in ("sequential", "direct")}
    print("\n== ReasonRec demo summary (test split) ==")
    for task, report in tools_eval.items():
        primary = manifest["config"]["primary"][task]
        print(f"{task} ({report['users']} users), every tool in the bundle:")
        for name, m in {**report["tools"], **report["baselines"]}.items():
            print(f"  {name:>14s}  " + "  ".join(f"{k} {v:.4f}" for k, v in m.items()))
        print(f"  {'nightly job':>14s}  " + "  ".join(f"{k} {v:.4f}" for k, v in batch_eval[task]["metrics"].items())
              + f"   (committed results, mode {manifest['mode']}; route low answered by {primary} or the vote)")
    m = vlm["metrics"]
    print(f"VLM deliberator (tiny Idefics3, R-VIT {vlm['training']['steps']} steps, loss "
          f"{vlm['training']['loss_first']:.3f} -> {vlm['training']['loss_last']:.3f}), {m['users']} test users, "
          f"{m['candidates']} candidates, alone (no tools): HR@1 tuned {m['HR@1_tuned']:.4f}, untuned "
          f"{m['HR@1_untuned']:.4f}, images blanked {m.get('HR@1_tuned_blank_images', float('nan')):.4f}, "
          f"chance {m['chance']:.4f}; a one-minute schedule: the measured recipe is "
          f"--config reasonrec/configs/rvit_synthetic.yaml (about 20 min, HR@1 ~5x chance)")
    for task, v in planner["validation"].items():
        p = v["plan"]
        print(f"planner for {task} (fitted on {v['rows']} validation users): route low (C < {p['tau_low']:.2f}) -> "
              f"{p['low']}, medium (C <= {p['tau_high']:.2f}) -> VLM unless confidence < {p['kappa']:.2f}, high -> "
              f"VLM + tools + aggregator; validation HR@5 {p['HR@5']:.4f} with the VLM on {p['vlm_share']:.0%} of rows "
              f"(primary tool {v['HR@5']['tool']:.4f}, vote {v['HR@5']['vote']:.4f}, VLM alone {v['HR@5']['vlm']:.4f}, "
              f"VLM + tools {v['HR@5']['aggregate']:.4f})")
    print(f"compare the four modes: reasonrec score --mode tools-only|vlm-only|vlm+tools-always|planner, then "
          f"reasonrec report --run ... --data {data}")
    print(f"outputs under {root}; finished in {time.perf_counter() - start:.0f}s")
    return {"manifest": manifest, "tools": tools_eval, "batch": batch_eval, "vlm": vlm, "planner": planner}


def build_parser() -> argparse.ArgumentParser:
    from reasonrec.data.loaders import FORMATS
    from reasonrec.evaluate import TASKS

    parser = argparse.ArgumentParser(prog="reasonrec", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write the synthetic multimodal catalogue (parquet format + images)")
    p.add_argument("--out", required=True)
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--items", type=int, default=400)
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("prepare", help="load a dataset, split leave-one-out, sample candidates, write parquet")
    p.add_argument("--source", required=True)
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True)
    p.add_argument("--min-len", type=int, default=3, help="users with fewer interactions are not evaluated")
    p.add_argument("--negatives", type=int, default=99)
    p.add_argument("--seed", type=int, default=12345)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train-tools", help="train the classical tools with Ray Train and commit a bundle")
    p.add_argument("--data", required=True)
    p.add_argument("--bundle", required=True)
    p.add_argument("--tools", help="comma-separated, e.g. sasrec,bprmf (default: sasrec,gru4rec,bprmf,lightgcn)")
    p.add_argument("--config", help="YAML with TrainToolsConfig fields (overrides: {tool: {field: value}})")
    p.add_argument("--workers", type=int)
    p.add_argument("--cpus-per-worker", type=float)
    p.add_argument("--threads", type=int)
    p.add_argument("--storage-path", help="Ray Train run storage (shared storage on a multi-node cluster)")
    p.add_argument("--epochs", type=int, help="max epochs for every tool")
    p.set_defaults(func=cmd_train_tools)

    p = sub.add_parser("finetune-vlm", help="R-VIT: fine-tune the VLM deliberator with Ray Train, add vlm/ to the bundle")
    p.add_argument("--data", required=True)
    p.add_argument("--bundle", required=True, help="a bundle with tools (its tools label the R-VIT examples)")
    p.add_argument("--base", help="a local Hugging Face VLM folder (Idefics3/SmolVLM, ...) to tune with LoRA; "
                                  "default: build the tiny Idefics3 from config and train it in full")
    p.add_argument("--config", help="YAML with FinetuneConfig fields (examples: {...}, curriculum: {...}, tiny: {...})")
    p.add_argument("--steps", type=int)
    p.add_argument("--warmup-steps", type=int, help="steps on the short prompt form first (a model from scratch)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--lora-rank", type=int, help="0: full fine-tune")
    p.add_argument("--noise", type=float, help="share of tool outputs replaced by a wrong answer")
    p.add_argument("--workers", type=int)
    p.add_argument("--cpus-per-worker", type=float)
    p.add_argument("--gpu", action="store_true", help="one GPU per Ray Train worker")
    p.add_argument("--eval-users", type=int, help="held-out users for the HR@1 report (0: skip)")
    p.add_argument("--storage-path", help="Ray Train run storage (shared storage on a multi-node cluster)")
    p.add_argument("--seed", type=int)
    p.set_defaults(func=cmd_finetune_vlm)

    p = sub.add_parser("requests", help="write request shards (one row per evaluated user and task) from a split")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--split", default="test", choices=("valid", "test"))
    p.add_argument("--tasks", default="sequential", help="comma-separated: sequential,direct,ctr,explain")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--shard-rows", type=int, default=5000)
    p.add_argument("--users", type=int, help="a seeded sample of this many users (default: every evaluated user)")
    p.add_argument("--seed", type=int, default=0, help="shuffles each direct request's candidates; the sample")
    p.set_defaults(func=cmd_requests)

    from jobs.fit_planner import add_arguments as add_fit_arguments
    from jobs.nightly_score import add_arguments

    p = sub.add_parser("fit-planner", help="fit the planner (aggregator, kappa, horizon thresholds) on the "
                                           "validation split and store it in the bundle")
    add_fit_arguments(p)
    p.set_defaults(func=cmd_fit_planner)

    p = sub.add_parser("score", help="the nightly scoring job (same as jobs/nightly_score.py)")
    add_arguments(p)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("serve", help="serve live recommendations with Ray Serve (FastAPI on 127.0.0.1 by default)")
    p.add_argument("--bundle", required=True)
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="default 8000")
    p.add_argument("--mode", choices=("tools-only", "vlm-only", "vlm+tools-always", "planner"))
    p.add_argument("--vlm-backend", choices=("auto", "transformers", "vllm"))
    p.add_argument("--default-proxy", action="store_true",
                   help="Serve's Python proxy instead of the high-throughput mode (HAProxy ingress)")
    p.add_argument("--config", help="YAML with ServeConfig fields (score: {ScoreConfig fields}, replicas, batching)")
    p.add_argument("--no-block", action="store_true", help="return once the app is up (scripts, tests)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("report", help="compare committed runs (one per mode): quality, routes, cost, overrides, "
                                      "cold start, threshold sweep -> markdown + PNG")
    p.add_argument("--run", action="append", required=True,
                   help="an output root of the nightly job (repeat, one per mode); its latest committed run is read")
    p.add_argument("--data", required=True, help="the prepared data the requests came from (targets, frequencies)")
    p.add_argument("--out", help="report folder (default: REPORT beside the first run's output root)")
    p.add_argument("--bundle", help="bundle for the threshold sweep (default: the runs' bundle)")
    p.add_argument("--split", default="test", choices=("valid", "test"))
    p.add_argument("--sweep-users", type=int, default=1000, help="users per task in the threshold sweep (0: skip)")
    p.add_argument("--vlm-backend", default="auto", choices=("auto", "transformers", "vllm"))
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("evaluate", help="HR/NDCG@5/10 of the bundle's tools (--bundle) or of committed results")
    p.add_argument("--data", required=True)
    p.add_argument("--bundle", help="score every tool of this bundle, popularity and Majority Vote")
    p.add_argument("--results", help="evaluate the committed batch results under this output root")
    p.add_argument("--run-date", help="with --results: the run date (default: the latest committed)")
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--split", default="test", choices=("valid", "test"))
    p.add_argument("--json")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="the embedded default end to end on the synthetic catalogue")
    p.add_argument("--out", default="demo_output")
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--items", type=int, default=400)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--config", help="YAML for train-tools (default: the packaged configs/demo_tools.yaml)")
    p.add_argument("--vlm-steps", type=int, help="R-VIT steps (default: configs/demo_vlm.yaml)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"reasonrec {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

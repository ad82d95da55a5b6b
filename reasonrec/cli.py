"""``reasonrec`` command line: synth, prepare, train-tools, evaluate, demo."""
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


def cmd_evaluate(args) -> dict:
    from reasonrec.bundle import Bundle
    from reasonrec.data.prepared import PreparedData
    from reasonrec.evaluate import evaluate_bundle

    report = evaluate_bundle(PreparedData(args.data), Bundle(args.bundle), args.task, args.split)
    if args.json:
        storage.write_json(args.json, report)
        print(f"wrote {args.json}")
    return report


def cmd_demo(args) -> dict:
    """The embedded default: synthetic catalogue -> prepare -> train tools -> evaluate, under one folder."""
    start = time.perf_counter()
    root = args.out
    raw, data, bundle = (storage.join(root, p) for p in ("raw", "data", "bundle"))
    ns = argparse.Namespace
    cmd_synth(ns(out=raw, users=args.users, items=args.items, seed=args.seed))
    cmd_prepare(ns(source=raw, format="parquet", out=data, min_len=3, negatives=99, seed=12345))
    config = args.config or str(Path(__file__).parent / "configs" / "demo_tools.yaml")
    cmd_train_tools(ns(data=data, bundle=bundle, config=config, tools=None, workers=None,
                       cpus_per_worker=None, threads=None, storage_path=None, epochs=None))
    reports = {task: cmd_evaluate(ns(data=data, bundle=bundle, task=task, split="test",
                                     json=storage.join(root, f"eval_{task}.json")))
               for task in ("sequential", "direct")}
    print("\n== ReasonRec demo summary (test split) ==")
    for task, report in reports.items():
        print(f"{task} ({report['users']} users):")
        for name, m in {**report["tools"], **report["baselines"]}.items():
            print(f"  {name:>14s}  HR@5 {m['HR@5']:.4f}  NDCG@5 {m['NDCG@5']:.4f}  "
                  f"HR@10 {m['HR@10']:.4f}  NDCG@10 {m['NDCG@10']:.4f}")
    print(f"outputs under {root}; finished in {time.perf_counter() - start:.0f}s")
    return reports


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

    p = sub.add_parser("evaluate", help="HR/NDCG@5/10 of every bundle tool, popularity and Majority Vote")
    p.add_argument("--data", required=True)
    p.add_argument("--bundle", required=True)
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

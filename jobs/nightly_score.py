"""The nightly scoring job (DESIGN.md §8): request shards -> horizon -> tools -> VLM -> planner -> committed results.

    ray job submit --working-dir . -- python jobs/nightly_score.py --requests URI --bundle URI --output URI

Ray Data streams the shards through a horizon actor pool (validation, evidence horizon, route), a CPU tool actor
pool (every consulted tool scores the row once: the route-low answer, the VLM's shortlist, the tools' opinions),
a VLM actor pool (GPU when the cluster has one; only rows the planner sends to the VLM are run through the model)
and a planner pool (route, escalate, aggregate, trace); one sink writes results and quarantine parts and then the
run's manifest. ``--mode`` picks who answers: tools-only, vlm-only, vlm+tools-always or planner.
``reasonrec score`` is the same job.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import sys
import time
from concurrent.futures import ThreadPoolExecutor


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--requests", required=True, help="request shards: a prefix of *.parquet or one file")
    parser.add_argument("--bundle", required=True, help="the committed model bundle")
    parser.add_argument("--output", required=True, help="results root: OUTPUT/run_date=D/run_id=R/")
    parser.add_argument("--run-date", help="YYYY-MM-DD (default: today, UTC)")
    parser.add_argument("--force", action="store_true", help="rescore a date that already has a committed run")
    parser.add_argument("--batch-size", type=int, help="rows per tool-actor batch")
    parser.add_argument("--tool-actors", type=int, help="size of the tool actor pool")
    parser.add_argument("--mode", choices=("tools-only", "vlm-only", "vlm+tools-always", "planner"),
                        help="who answers (default planner)")
    parser.add_argument("--vlm-backend", choices=("auto", "transformers", "vllm"),
                        help="the deliberator backend (default auto: vLLM when installed)")
    parser.add_argument("--shortlist", type=int, help="candidates the VLM ranks (the tools' top N)")
    parser.add_argument("--config", help="YAML with ScoreConfig fields (flags override it)")


def score_config(args):
    from reasonrec.batch.config import ScoreConfig
    from reasonrec.config import from_dict, load_yaml

    values = load_yaml(args.config)
    for flag in ("batch_size", "tool_actors", "mode", "shortlist"):
        if getattr(args, flag, None) is not None:
            values[flag] = getattr(args, flag)
    if getattr(args, "vlm_backend", None):
        values.setdefault("deliberator", {})["backend"] = args.vlm_backend
    return from_dict(ScoreConfig, values)


def run(args, config=None, log=print) -> dict:
    import ray
    from ray.data import ActorPoolStrategy

    from actors.deliberator import VLMActor, actor_resources
    from actors.horizon import HorizonActor
    from actors.planner import PlannerActor
    from actors.request_source import RequestShards
    from actors.results_sink import ResultsDatasink
    from actors.tools import ToolActor
    from reasonrec import storage
    from reasonrec.batch import commit, requests
    from reasonrec.batch.config import check_bundle
    from reasonrec.bundle import Bundle

    config = config or score_config(args)
    bundle_uri, output = storage.absolute(args.bundle), storage.absolute(args.output)
    bundle = Bundle(bundle_uri)
    check_bundle(bundle, config)
    run_date = commit.Run.new(output, args.run_date).run_date
    previous = commit.committed_run(output, run_date)
    if previous is not None and not args.force:
        log(f"run_date={run_date} is already committed (run {previous['run_id']}, {previous['rows_out']} "
            f"results, {previous['rows_quarantined']} quarantined): nothing to do; --force rescores it")
        return {**previous, "noop": True}

    shards = requests.list_shards(storage.absolute(args.requests))
    with ThreadPoolExecutor(16) as pool:  # footers only: an independent count of what must come out
        shard_rows = list(pool.map(requests.rows_in_shard, shards))
    rows_in = sum(shard_rows)
    header = {"requests": storage.absolute(args.requests), "bundle": bundle_uri, "bundle_version": bundle.version,
              "shards": len(shards), "rows_in": rows_in, "mode": config.mode, "config": dataclasses.asdict(config)}
    run, reused, done = commit.start(output, run_date, header, force=args.force)
    skip = _rows_by_shard(done)
    todo = [(uri, rows) for uri, rows in zip(shards, shard_rows) if len(skip.get(uri, ())) < rows]
    log(f"scoring {rows_in} requests from {len(shards)} shard(s) with bundle {bundle.version} -> {run.uri}")
    if reused:
        log(f"resuming run {run.run_id}: {done.num_rows} rows already answered in {len(reused)} parts; "
            f"{len(todo)} shard(s) left")
    if not todo:  # the interrupted run wrote everything but its manifest
        manifest = commit.finish(run, rows_in, header, reused, len(reused), dt.datetime.now(dt.timezone.utc), 0.0)
        log(summary(manifest))
        return manifest
    # Over every shard: the first copy of a request may sit in a shard the resumed run already answered.
    duplicates = requests.duplicate_rows(shards, tuple(config.primary), config.max_k)

    if not ray.is_initialized():
        ray.init()  # joins RAY_ADDRESS when set (ray job submit), else starts a local instance
    cpu_only = {"resources": dict(config.cpu_actor_resources)} if config.cpu_actor_resources else {}
    ds = ray.data.read_datasource(RequestShards([u for u, _ in todo], [r for _, r in todo], skip, duplicates),
                                  override_num_blocks=len(todo), num_cpus=config.io_cpus)
    ds = ds.map_batches(HorizonActor, fn_constructor_kwargs={"bundle_uri": bundle_uri, "config": config},
                        batch_size=config.horizon_batch_size, batch_format="pyarrow",
                        compute=ActorPoolStrategy(size=1), num_cpus=config.horizon_actor_cpus, **cpu_only)
    ds = ds.map_batches(ToolActor, fn_constructor_kwargs={"bundle_uri": bundle_uri, "config": config},
                        batch_size=config.batch_size, batch_format="pyarrow",
                        compute=ActorPoolStrategy(size=config.tool_actors),
                        num_cpus=config.tool_actor_cpus, **cpu_only)
    if config.mode != "tools-only":
        ds = ds.map_batches(VLMActor, fn_constructor_kwargs={"bundle_uri": bundle_uri, "config": config},
                            batch_size=config.vlm_batch_size, batch_format="pyarrow",
                            compute=ActorPoolStrategy(size=config.vlm_actors), **actor_resources(config.deliberator))
    ds = ds.map_batches(PlannerActor, fn_constructor_kwargs={"bundle_uri": bundle_uri, "config": config},
                        batch_size=config.batch_size, batch_format="pyarrow",
                        compute=ActorPoolStrategy(size=1), num_cpus=config.planner_cpus, **cpu_only)
    sink = ResultsDatasink(run, rows_in, header, reused, rows_per_part=config.batch_size)
    try:
        ds.write_datasink(sink, ray_remote_args={"num_cpus": config.io_cpus})
    except Exception as e:
        cause = _storage_error(e)
        if cause is None:
            raise
        raise RuntimeError(f"storage: {cause} (after retries); nothing was committed (no manifest) under "
                           f"{run.uri}; rerun the same date to resume") from e
    manifest = sink.manifest
    log(summary(manifest))
    return manifest


def _storage_error(error: BaseException) -> OSError | None:
    """The storage failure (an OSError after the filesystem's retries) behind a job error, if that is what it is."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError):
            return error
        error = getattr(error, "cause", None) or error.__cause__ or error.__context__
    return None


def _rows_by_shard(keys) -> dict:
    """(shard, row) keys as {shard: sorted rows}."""
    import numpy as np

    out = {}
    if keys.num_rows:
        keys = keys.sort_by([("shard", "ascending"), ("row", "ascending")])
        shards, rows = keys.column("shard").to_numpy(zero_copy_only=False), keys.column("row").to_numpy()
        starts = np.flatnonzero(np.r_[True, shards[1:] != shards[:-1]])
        for start, end in zip(starts, np.r_[starts[1:], len(shards)]):
            out[shards[start]] = rows[start:end]
    return out


def summary(manifest: dict) -> str:
    routes = ", ".join(f"{route} {n}" for route, n in manifest["routes"].items()) or "none"
    latency = ", ".join(f"{r} {ms:.2f}" for r, ms in manifest["latency_ms_mean"].items()) or "-"
    stages = ", ".join(f"{s} {n}" for s, n in manifest["quarantine_stages"].items())
    return "\n".join([
        f"== nightly job {manifest['run_date']} (run {manifest['run_id']}, mode {manifest.get('mode')}) committed ==",
        f"rows in {manifest['rows_in']} = results {manifest['rows_out']} + quarantined "
        f"{manifest['rows_quarantined']}" + (f" ({stages})" if stages else "")
        + (f"; resumed: {manifest['resumed']['rows_reused']} rows reused" if manifest.get("resumed") else ""),
        f"routes: {routes}; tool usage {manifest['tool_usage_rate']:.0%}; ms/row by route: {latency}",
        f"VLM calls {manifest['vlm_calls_total']}, tool consultations {manifest['tool_calls_total']}, escalations "
        f"{manifest['escalation_rate']:.1%}, VLM overrides {manifest['override_rate']:.1%}",
        f"{manifest['users_per_s']:.0f} users/s, {manifest['seconds']:.1f} s wall; bundle {manifest['bundle_version']}",
        f"results under {manifest['output']}/run_date={manifest['run_date']}/run_id={manifest['run_id']}",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nightly_score", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        run(args)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"nightly_score: error: {e}", file=sys.stderr)
        return 2
    print(f"done in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

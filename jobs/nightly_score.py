"""The nightly scoring job on Ray Data: request shards -> horizon -> tools -> VLM -> planner -> committed results.

    ray job submit --working-dir . -- python jobs/nightly_score.py --requests URI --bundle URI --output URI

A horizon actor pool (validation, evidence horizon, route, plan), a CPU tool actor pool (every consulted tool
scores the row once), a VLM actor pool (GPU when the cluster has one; only rows whose plan asks the VLM) and a
planner pool (escalate, aggregate, trace); one sink writes results and quarantine parts, then the run is committed
and published under OUTPUT/run_date=D/ (DESIGN.md §7). --mode picks who answers: tools-only, vlm-only,
vlm+tools-always or planner. A date with a committed run is a no-op (--force rescores it); a run that died before
its commit is resumed by the next run of the same date."""
from __future__ import annotations

import argparse
import dataclasses
import functools
import sys

from jobs import cli
from reasonrec.batch.config import ScoreConfig


@dataclasses.dataclass
class NightlyJob:
    requests: str
    bundle: str
    output: str
    run_date: str | None = None  # YYYY-MM-DD, default today (UTC)
    force: bool = False
    score: ScoreConfig = dataclasses.field(default_factory=ScoreConfig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = lambda field: cli.default(ScoreConfig, field)  # noqa: E731
    parser.add_argument("--requests", required=True, help="request shards: a prefix of *.parquet or one file")
    parser.add_argument("--bundle", required=True, help="the committed model bundle")
    parser.add_argument("--output", required=True, help="results root: OUTPUT/run_date=D/part-*.parquet")
    parser.add_argument("--run-date", help="YYYY-MM-DD (default: today, UTC)")
    parser.add_argument("--force", action="store_true", help="rescore a date that already has a committed run")
    parser.add_argument("--mode", choices=("tools-only", "vlm-only", "vlm+tools-always", "planner"),
                        help=f"who answers (default {d('mode')})")
    parser.add_argument("--vlm-backend", choices=("auto", "transformers", "vllm"),
                        help="the deliberator backend (default auto: vLLM when installed)")
    parser.add_argument("--vlm-device", choices=("cuda", "cpu"),
                        help="where the VLM actors run: cuda asks Ray for a GPU each (default), cpu for none")
    parser.add_argument("--shortlist", type=int, help=f"candidates the VLM ranks: the tools' top N "
                                                      f"(default {d('shortlist')})")
    parser.add_argument("--batch-size", type=int, help=f"rows per tool-actor batch (default {d('batch_size')})")
    parser.add_argument("--tool-actors", type=int, help=f"size of the tool actor pool (default {d('tool_actors')})")
    parser.add_argument("--config", help="YAML with ScoreConfig fields (flags override it)")


def config(args: argparse.Namespace) -> NightlyJob:
    from reasonrec.config import load

    overrides = {"batch_size": args.batch_size, "tool_actors": args.tool_actors, "mode": args.mode,
                 "shortlist": args.shortlist, "deliberator.backend": args.vlm_backend,
                 "deliberator.device": args.vlm_device}
    return NightlyJob(args.requests, args.bundle, args.output, args.run_date, args.force,
                      load(ScoreConfig, args.config, overrides))


def run(job: NightlyJob) -> dict:
    """Plan the run at the driver, stream it through the actor pools, commit it; returns its manifest."""
    from reasonrec.batch import job as nightly

    plan = nightly.plan(job.requests, job.bundle, job.output, job.score, job.run_date, job.force,
                        find_duplicates=functools.partial(duplicates_on_ray, num_cpus=job.score.io_cpus))
    if plan.manifest is not None:  # already committed, or an interrupted run that had written everything
        return plan.manifest
    sink = on_ray_data(plan, plan.header["bundle"], job.score)
    return plan.finish(sink.parts)


def duplicates_on_ray(*args, **kwargs) -> dict:
    """The duplicate scan as Ray tasks; Ray starts here, so a date already committed never starts it."""
    from actors import duplicates

    cli.ray_init()
    return duplicates.find(*args, **kwargs)


def on_ray_data(plan, bundle_uri: str, config: ScoreConfig):
    """The Ray Data pipeline over the plan's shards; returns the sink, which holds what its write tasks wrote."""
    import ray
    from ray.data import ActorPoolStrategy

    from actors.request_source import RequestShards
    from actors.results_sink import ResultsDatasink
    from actors.stages import HorizonActor, PlannerActor, ToolActor, VLMActor, vlm_resources

    cli.ray_init()
    cpu_only = {"resources": dict(config.cpu_actor_resources)} if config.cpu_actor_resources else {}
    args = {"bundle_uri": bundle_uri, "config": config}
    ds = ray.data.read_datasource(RequestShards(plan.todo, plan.skip, plan.duplicates),
                                  override_num_blocks=len(plan.todo), num_cpus=config.io_cpus)
    ds = ds.map_batches(HorizonActor, fn_constructor_kwargs=args, batch_size=config.horizon_batch_size,
                        batch_format="pyarrow", compute=ActorPoolStrategy(size=1),
                        num_cpus=config.horizon_actor_cpus, **cpu_only)
    ds = ds.map_batches(ToolActor, fn_constructor_kwargs=args, batch_size=config.batch_size, batch_format="pyarrow",
                        compute=ActorPoolStrategy(size=config.tool_actors), num_cpus=config.tool_actor_cpus,
                        **cpu_only)
    if config.mode != "tools-only":
        ds = ds.map_batches(VLMActor, fn_constructor_kwargs=args, batch_size=config.vlm_batch_size,
                            batch_format="pyarrow", compute=ActorPoolStrategy(size=config.vlm_actors),
                            **vlm_resources(config.deliberator))
    ds = ds.map_batches(PlannerActor, fn_constructor_kwargs=args, batch_size=config.batch_size,
                        batch_format="pyarrow", compute=ActorPoolStrategy(size=1), num_cpus=config.planner_cpus,
                        **cpu_only)
    sink = ResultsDatasink(plan.run, rows_per_part=config.batch_size)
    try:
        ds.write_datasink(sink, ray_remote_args={"num_cpus": config.io_cpus})
    except Exception as e:
        cause = _storage_error(e)
        if cause is None:
            raise
        raise RuntimeError(f"{cli.one_line(cause)} (after retries); nothing was committed (no manifest) under "
                           f"{plan.run.uri}; rerun the same date to resume") from e
    return sink


def _storage_error(error: BaseException) -> OSError | None:
    """The storage failure (an OSError after the filesystem's retries) behind a job error, if that is what it is."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError):
            return error
        error = getattr(error, "cause", None) or error.__cause__ or error.__context__
    return None


def main(argv: list[str] | None = None) -> int:
    return cli.run_module(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())

"""The nightly job's plan, and its in-process runner.

``plan`` is everything the job decides at the driver before a row is read: the bundle can answer (``Scoring``), the
date is not already committed, the shards and their row counts (from their footers: an independent count of what
must come out), the run to write or to resume, and the rows that repeat an earlier request. Two runners execute a
plan with the same stages and the same commit: ``jobs/nightly_score.py`` on Ray Data (actor pools, the cluster's
resources; ``reasonrec score``), and ``score`` here, in this process (notebooks, small request sets, tests), so
that the library needs no Ray shell to score.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from reasonrec import storage
from reasonrec.batch import commit, duplicates, shards
from reasonrec.batch.config import ScoreConfig
from reasonrec.batch.context import Scoring
from reasonrec.batch.local import LocalPipeline
from reasonrec.batch.stream import to_sink

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Plan:
    scoring: Scoring
    run: commit.Run | None = None
    header: dict = dataclasses.field(default_factory=dict)
    rows_in: int = 0
    reused: list[dict] = dataclasses.field(default_factory=list)  # parts of the interrupted run this one resumes
    todo: list[tuple[str, int]] = dataclasses.field(default_factory=list)  # (shard, rows in its footer)
    skip: dict = dataclasses.field(default_factory=dict)  # per shard, rows the resumed run already answered
    duplicates: dict = dataclasses.field(default_factory=dict)  # per shard, {row: first shard#row}
    manifest: dict | None = None  # set when there is nothing to score: the date's committed run
    started: dt.datetime = dataclasses.field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))
    clock: float = dataclasses.field(default_factory=time.perf_counter)

    def finish(self, parts: list[dict]) -> dict:
        """Commit the run from the parts its blocks wrote (``commit.write_part``'s returns)."""
        self.manifest = commit.finish(self.run, self.rows_in, self.header, self.reused + parts, len(self.reused),
                                      self.started, time.perf_counter() - self.clock)
        logger.info(summary(self.manifest))
        return self.manifest


def plan(requests: str, bundle: str, output: str, config: ScoreConfig, run_date: str | None = None,
         force: bool = False, find_duplicates=duplicates.find) -> Plan:
    """What the driver decides before a row is read; ``Plan.manifest`` is set when nothing is left to score.
    ``find_duplicates``: the duplicate scan's runner (``duplicates.find`` in this process, or on Ray tasks)."""
    requests, bundle, output = storage.absolute(requests), storage.absolute(bundle), storage.absolute(output)
    scoring = Scoring.load(bundle, config)
    scoring.check()
    run_date = commit.Run.new(output, run_date).run_date
    previous = commit.committed_run(output, run_date)
    if previous is not None and not force:
        if not commit.is_published(previous):  # its driver died while publishing
            commit.publish(previous)
        logger.info(f"run_date={run_date} is already committed (run {previous['run_id']}, {previous['rows_out']} "
                    f"results, {previous['rows_quarantined']} quarantined): nothing to do; --force rescores it")
        return Plan(scoring, manifest={**previous, "noop": True})

    listed = shards.list_shards(requests)
    with ThreadPoolExecutor(16) as pool:  # footers only: an independent count of what must come out
        rows = list(pool.map(shards.rows_in_shard, listed))
    settings = dataclasses.asdict(config)
    pools = {name: settings.pop(name) for name in ScoreConfig.POOLS}
    header = {"requests": requests, "bundle": bundle, "bundle_version": scoring.bundle.version,
              "shards": len(listed), "rows_in": sum(rows), "mode": config.mode, "primary": scoring.primary,
              "config": settings, "pools": pools}
    run, reused, skip = commit.start(output, run_date, header, force=force)
    todo = [(uri, n) for uri, n in zip(listed, rows) if len(skip.get(uri, ())) < n]
    logger.info(f"scoring {sum(rows)} requests from {len(listed)} shard(s) with bundle {scoring.bundle.version} "
                f"-> {run.uri}")
    found = Plan(scoring, run, header, sum(rows), reused, todo, skip)
    if reused:
        answered = sum(map(len, skip.values()))
        logger.info(f"resuming run {run.run_id}: {answered} rows already answered in {len(reused)} parts; "
                    f"{len(todo)} shard(s) left")
    if not todo:  # the interrupted run wrote everything but its manifest
        found.finish([])
        return found
    # Over every shard: the first copy of a request may sit in a shard the resumed run already answered.
    found.duplicates = find_duplicates(listed, scoring.answered, config.max_k)
    return found


def score(requests: str, bundle: str, output: str, config: ScoreConfig | None = None, run_date: str | None = None,
          force: bool = False) -> dict:
    """The nightly job in this process (no Ray): the same plan, stages, quarantine, resume and commit as the Ray Data
    job. Returns the run's manifest."""
    config = config or ScoreConfig()
    job = plan(requests, bundle, output, config, run_date, force)
    if job.manifest is not None:
        return job.manifest
    pipeline = LocalPipeline(job.scoring, vlm_batches=True)
    parts = []
    for uri, _ in job.todo:
        stream = shards.read_shard(uri, job.skip.get(uri), job.duplicates.get(uri))
        for lo in range(0, stream.num_rows, config.batch_size):
            block = pipeline.stages(stream.slice(lo, config.batch_size))
            parts.append(commit.write_part(to_sink(block), job.run))
    return job.finish(parts)


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
        f"results under {manifest['output']}/run_date={manifest['run_date']}/ (quarantine under "
        f"{manifest['output']}/{commit.QUARANTINE}/run_date={manifest['run_date']}/)",
    ])

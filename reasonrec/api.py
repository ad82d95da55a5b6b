"""The Python API: the main verbs with typed configs, usable from a notebook (``from reasonrec import ...``).

    import reasonrec
    reasonrec.synth("cat")                                   # or your own data: reasonrec.prepare(...)
    reasonrec.prepare("cat", "parquet", "data")
    reasonrec.train_tools("data", "bundle")                  # Ray Train (starts a local Ray if none is connected)
    requests = reasonrec.make_requests("data", tasks=("sequential",))
    reasonrec.write_requests(requests, "requests")
    manifest = reasonrec.score("requests", "bundle", "results", reasonrec.ScoreConfig(mode="tools-only"))
    results = reasonrec.read_results("results")
    reasonrec.evaluate("data", "sequential", results="results")
    reasonrec.Recommender("bundle", reasonrec.ScoreConfig(mode="tools-only")).recommend({"user_id": "u00042"})

``score`` runs the nightly job in this process; the same job on a Ray cluster is ``reasonrec score`` (or
``jobs/nightly_score.py``), with the same stages, commit and results. Quiet by default: ``reasonrec.logs.console()``
prints the progress lines the command prints.
"""
from __future__ import annotations

import pyarrow as pa

from reasonrec import storage
from reasonrec.batch.commit import read_committed
from reasonrec.batch.job import score
from reasonrec.batch.requests import make_requests as _make_requests
from reasonrec.batch.requests import write_requests
from reasonrec.data.synthetic import SyntheticConfig

__all__ = ["synth", "prepare", "train_tools", "finetune_vlm", "fit_planner", "make_requests", "write_requests",
           "score", "read_results", "read_quarantine", "evaluate", "write_report"]


def synth(out: str, config: SyntheticConfig | None = None) -> dict:
    """Write the synthetic multimodal catalogue (the ``parquet`` source format, with item images) under ``out``."""
    from reasonrec.data import synthetic

    return synthetic.write(config or SyntheticConfig(), out)


def prepare(source: str | list[str], format: str | list[str], out: str, *, min_len: int = 3, negatives: int = 99,
            seed: int = 12345, cut: str | int | None = None, domains: list[str] | None = None) -> dict:
    """Load a dataset (``amazon-seq``, ``recbole`` or ``parquet``), split it leave-one-out (or at ``cut``, a date
    or epoch seconds: train before, test after), sample the direct task's candidates and write the prepared folder;
    returns its ``meta.json``. Several sources (one format each, or one for all) make one multi-domain catalogue
    whose ids are prefixed by ``domains`` (default: each source's folder name)."""
    from reasonrec.data import domains as multi
    from reasonrec.data import loaders, prepared, split

    sources = [source] if isinstance(source, str) else list(source)
    formats = [format] * len(sources) if isinstance(format, str) else list(format)
    if len(formats) == 1:
        formats *= len(sources)
    if len(formats) != len(sources):
        raise ValueError(f"{len(sources)} sources but {len(formats)} formats: give one format, or one per source")
    raws = [loaders.load(s, f) for s, f in zip(sources, formats)]
    names = None
    if len(raws) > 1 or domains:
        names = list(domains) if domains else [raw.name for raw in raws]
        raw = multi.combine(raws, names)
    else:
        raw = raws[0]
    when = None if cut is None else split.parse_cut(cut)
    return prepared.prepare(raw, out, min_len=min_len, n_negatives=negatives, seed=seed, cut=when, domains=names)


def train_tools(data: str, bundle: str, config=None) -> dict:
    """Train the classical tools (``TrainToolsConfig``) with Ray Train and commit the bundle."""
    from reasonrec.train.tools import train_tools as run

    _ray()
    return run(data, bundle, config)


def finetune_vlm(data: str, bundle: str, config=None, base: str | None = None) -> dict:
    """R-VIT: fine-tune the VLM deliberator (``FinetuneConfig``) with Ray Train into the bundle's ``vlm/``."""
    from reasonrec.train.vlm import finetune_vlm as run

    _ray()
    return run(data, bundle, config, base=base)


def fit_planner(data: str, bundle: str, config=None) -> dict:
    """Fit the planner (``FitPlannerConfig``) on the validation split and store it in the bundle."""
    from reasonrec.train.planner import fit_planner as run

    return run(data, bundle, config)


def make_requests(data: str, split: str = "test", tasks: tuple[str, ...] = ("sequential", "direct"), k: int = 10,
                  users: int = 0, seed: int = 0) -> pa.Table:
    """One request per evaluated user of ``split`` and task (``users``: a seeded sample, the same for every task)."""
    from reasonrec.data.prepared import PreparedData

    return _make_requests(PreparedData(storage.absolute(data)), split, tuple(tasks), k, users, seed)


def read_results(output: str, run_date: str | None = None) -> pa.Table:
    """The committed results of a date (default: the latest committed date) of a nightly job's output."""
    return read_committed(storage.absolute(output), run_date)


def read_quarantine(output: str, run_date: str | None = None) -> pa.Table:
    """The rows that date's committed run quarantined, each with its input, source, stage and reason."""
    return read_committed(storage.absolute(output), run_date, table="quarantine")


def evaluate(data: str, task: str, *, bundle: str | None = None, results: str | None = None,
             run_date: str | None = None, split: str = "test") -> dict:
    """HR/NDCG of every tool of ``bundle`` (with popularity and the Majority Vote), or of committed ``results``."""
    from reasonrec.bundle import Bundle
    from reasonrec.data.prepared import PreparedData
    from reasonrec.evaluator import evaluate_bundle, evaluate_results

    if (bundle is None) == (results is None):
        raise ValueError("evaluate needs exactly one of bundle (score its tools) or results (a committed run)")
    prepared = PreparedData(storage.absolute(data))
    if results is None:
        return evaluate_bundle(prepared, Bundle(storage.absolute(bundle)), task, split)
    from reasonrec.batch.commit import committed_dates, committed_run

    output = storage.absolute(results)
    dates = committed_dates(output)
    run = committed_run(output, run_date or (dates[-1] if dates else "")) or {}
    report = evaluate_results(read_results(results, run_date), prepared, task, split)
    return {**report, "dataset": prepared.meta["dataset"], "split_kind": prepared.meta.get("split", "leave-one-out"),
            "mode": run.get("mode"), "run_id": run.get("run_id")}


def write_report(runs: list[str], data: str, out: str | None = None, config=None, bundle: str | None = None) -> dict:
    """Compare committed runs (one per mode): quality, routes, cost, overrides, cold start, threshold sweep."""
    from reasonrec.report import write_report as run

    return run(runs, data, out, config, bundle_uri=bundle)


def _ray() -> None:
    import ray

    if not ray.is_initialized():
        ray.init()  # joins RAY_ADDRESS when set (ray job submit), else starts a local instance

"""The commit protocol of batch results (DESIGN.md §7), laid out so that any reader can trust the output root.

    OUTPUT/run_date=D/part-<id>.parquet      the results of the date's latest committed run (schemas.RESULTS)
    OUTPUT/run_date=D/_SUCCESS               written last: the date is complete (Hadoop/Spark convention)
    OUTPUT/run_date=D/_manifest.json         a copy of that run's manifest (counts, settings, the part ids)
    OUTPUT/_quarantine/run_date=D/part-<id>  the rows that run quarantined (Parquet, schemas.QUARANTINE)
    OUTPUT/_runs/run_date=D/run_id=R/        each run's own folder: staged parts, resume ledger, header, manifest

Readers that know nothing of manifests see exactly the committed results in a plain read of the root (or of
``run_date=D``): ``pyarrow.dataset``, Spark, Hive and Trino/Athena skip ``_``-prefixed paths, and DuckDB's
``read_parquet('OUTPUT')`` (which globs ``**/*.parquet``) matches only the published results, because they are the
only files whose names end in ``.parquet``: no quarantine or ledger rows, nothing of a run still being written.
``run_date`` is the only partition key and no column of the results. A run stages its parts in its own folder;
``_manifest.json`` written there is the commit point; then the run is *published*: its parts move to ``run_date=D/``
and ``_quarantine/run_date=D/``, the date's older parts are removed, ``_SUCCESS`` is written. Publishing is
idempotent: a driver that dies midway leaves a committed run that ``read_committed`` reads from wherever its parts
are and that the next run of the date publishes. While a ``--force`` rerun publishes, a plain reader of that date
may see both runs' parts for those seconds (``_SUCCESS`` is absent then); manifest-aware readers
(``read_committed``) never do.

Resume: each written block also leaves ``ledger/part-<id>`` in the run's folder, written after its parts:
the (shard, row) keys of the input rows it answered, with its counts. A run that died before its manifest (driver
crash) is picked up by the next run of the same date with the same inputs, bundle and settings: the rows its
ledger covers are not read again, and the manifest counts the reused parts and says it resumed. The block is the
unit of redone work.
"""
from __future__ import annotations

import datetime as dt
import json
import posixpath
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reasonrec import storage
from reasonrec.data import schemas

MANIFEST = "_manifest.json"
SUCCESS = "_SUCCESS"
RUN_HEADER = "_run.json"  # what the run scores (inputs, bundle, settings): a rerun resumes only the same work
LEDGER = "ledger"
RUNS = "_runs"
QUARANTINE = "_quarantine"


@dataclass(frozen=True)
class Run:
    output: str
    run_date: str
    run_id: str

    @classmethod
    def new(cls, output: str, run_date: str | None = None) -> "Run":
        run_date = run_date or dt.datetime.now(dt.timezone.utc).date().isoformat()
        try:
            dt.date.fromisoformat(run_date)
        except ValueError:
            raise ValueError(f"run date {run_date!r} is not YYYY-MM-DD") from None
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
        return cls(output, run_date, f"{stamp}-{uuid.uuid4().hex[:8]}")

    @property
    def date_uri(self) -> str:
        """Where the date's committed results are published."""
        return storage.join(self.output, f"run_date={self.run_date}")

    @property
    def quarantine_uri(self) -> str:
        return storage.join(self.output, QUARANTINE, f"run_date={self.run_date}")

    @property
    def uri(self) -> str:
        """The run's own folder: its staged parts, ledger, header and manifest."""
        return storage.join(runs_uri(self.output, self.run_date), f"run_id={self.run_id}")

    def staged(self, kind: str, part: str) -> str:
        """Where a block's ``results``, ``quarantine`` or ``ledger`` file is written (no ``.parquet`` suffix)."""
        return storage.join(self.uri, kind, part)

    def published(self, kind: str, part: str) -> str:
        """Where a committed part is read: results as ``run_date=D/<part>.parquet``, quarantine beside in
        ``_quarantine/``."""
        if kind == "results":
            return storage.join(self.date_uri, f"{part}.parquet")
        return storage.join(self.quarantine_uri, part)


def runs_uri(output: str, run_date: str) -> str:
    return storage.join(output, RUNS, f"run_date={run_date}")


def write_part(table: pa.Table, run: Run) -> dict:
    """Write one block of answered rows: results and quarantine parts; returns what the manifest needs."""
    ok = table.column("error").is_null()
    results = _results(table.filter(ok), run.run_id)
    quarantine = _quarantine(table.filter(pc.invert(ok)), run.run_id)
    name = f"part-{uuid.uuid4().hex}"
    written = {"results": [], "quarantine": []}
    for kind, rows in (("results", results), ("quarantine", quarantine)):
        if rows.num_rows:
            storage.write_parquet(rows, run.staged(kind, name))
            written[kind].append(name)
    part = _stats(results, quarantine, written)
    # Last: a ledger entry vouches for parts that are complete (a crash before it means the block is redone).
    keys = table.select(["shard", "row"]).replace_schema_metadata({"part": json.dumps(part)})
    storage.write_parquet(keys, run.staged(LEDGER, name))
    return part


def _stats(results: pa.Table, quarantine: pa.Table, written: dict) -> dict:
    latency = results.group_by("route").aggregate([("latency_ms", "sum")])
    per_route = {name: _sums_by_route(results, column)
                 for name, column in (("vlm_calls", "vlm_called"), ("escalations", "escalated"),
                                      ("overrides", "overrode"))}
    per_route["tool_calls"] = _sums_by_route(results.append_column(
        "n_tools", pc.fill_null(pc.list_value_length(results.column("tools")), 0)), "n_tools")
    return {
        **per_route,
        **written,
        "rows_out": results.num_rows,
        "rows_quarantined": quarantine.num_rows,
        "routes": _counts(results.column("route")),
        "tasks": _counts(results.column("task")),
        "paths": _counts(results.column("path")),
        "quarantine_stages": _counts(quarantine.column("stage")),
        "latency_ms_sum": dict(zip(latency.column("route").to_pylist(), latency.column("latency_ms_sum").to_pylist())),
        "tool_rows": int(pc.sum(pc.greater(pc.fill_null(pc.list_value_length(results.column("tools")), 0), 0))
                         .as_py() or 0),
    }


def _sums_by_route(results: pa.Table, column: str) -> dict:
    values = pc.cast(results.column(column), pa.int64())
    sums = pa.table({"route": results.column("route"), "v": values}).group_by("route").aggregate([("v", "sum")])
    return dict(zip(sums.column("route").to_pylist(), sums.column("v_sum").to_pylist()))


def _counts(column: pa.ChunkedArray) -> dict:
    counts = pc.value_counts(column)
    return dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()))


def _results(table: pa.Table, run_id: str) -> pa.Table:
    table = table.append_column("run_id", pa.array(np.full(table.num_rows, run_id), pa.string()))
    return table.select(schemas.RESULTS.names).cast(schemas.RESULTS)


def _quarantine(table: pa.Table, run_id: str) -> pa.Table:
    n = table.num_rows
    rows = table.select([f.name for f in schemas.REQUESTS]).to_pylist()  # rejected rows only
    raw = table.column("raw").to_pylist()
    inputs = [r if r is not None else json.dumps(row) for r, row in zip(raw, rows)]
    row = table.column("row")
    with_row = pc.binary_join_element_wise(table.column("shard"), pc.cast(row, pa.string()), "#")
    source = pc.if_else(pc.less(row, 0), table.column("shard"), with_row)
    return pa.table({
        "input": pa.array(inputs, pa.string()), "source": source, "stage": table.column("stage"),
        "reason": table.column("error"), "run_id": pa.array(np.full(n, run_id), pa.string()),
    }, schema=schemas.QUARANTINE)


def summarise(parts: list[dict]) -> dict:
    """Totals over every written part (the ``write_part`` returns)."""
    total = {"results": [], "quarantine": [], "rows_out": 0, "rows_quarantined": 0, "tool_rows": 0}
    counters = {name: Counter() for name in ("routes", "tasks", "quarantine_stages", "latency_ms_sum", "vlm_calls",
                                             "escalations", "overrides", "tool_calls", "paths")}
    for part in parts:
        for key in ("results", "quarantine"):
            total[key] += part[key]
        for key in ("rows_out", "rows_quarantined", "tool_rows"):
            total[key] += part[key]
        for name, counter in counters.items():
            counter.update(part[name])
    routes = dict(sorted(counters["routes"].items()))
    rows = max(total["rows_out"], 1)
    return {
        **total, "routes": routes, "tasks": dict(counters["tasks"]),
        "route_shares": {r: n / rows for r, n in routes.items()},
        "paths": dict(counters["paths"]),
        **{name: dict(counters[name]) for name in ("vlm_calls", "escalations", "overrides", "tool_calls")},
        "vlm_calls_total": sum(counters["vlm_calls"].values()),
        "tool_calls_total": sum(counters["tool_calls"].values()),
        "override_rate": sum(counters["overrides"].values()) / rows,
        "escalation_rate": sum(counters["escalations"].values()) / rows,
        "quarantine_stages": dict(counters["quarantine_stages"]),
        "latency_ms_mean": {r: counters["latency_ms_sum"][r] / n for r, n in routes.items()},
        "tool_usage_rate": total["tool_rows"] / total["rows_out"] if total["rows_out"] else 0.0,
    }


def start(output: str, run_date: str | None, header: dict, force: bool = False) -> tuple[Run, list[dict], dict]:
    """The run to write: the date's latest unfinished run with the same header (unless ``force``; its ``pools``,
    how the work is spread, may differ), resumed with the parts its ledger vouches for and, per shard, the rows
    they answered; else a new run."""
    header = json.loads(json.dumps(header, sort_keys=True, default=str))  # as it reads back from storage
    fresh = Run.new(output, run_date)
    if not force:
        for run_id in reversed(_run_ids(output, fresh.run_date)):
            run = Run(output, fresh.run_date, run_id)
            if storage.exists(storage.join(run.uri, MANIFEST)):
                break  # committed runs are not reopened
            if _work(_header(run)) == _work(header):
                parts, answered = recorded_parts(run)
                return run, parts, answered
    storage.write_json(storage.join(fresh.uri, RUN_HEADER), header)
    return fresh, [], {}


def _work(header: dict | None) -> dict | None:
    return header and {key: value for key, value in header.items() if key != "pools"}


def _header(run: Run) -> dict | None:
    try:
        return storage.read_json(storage.join(run.uri, RUN_HEADER))
    except (FileNotFoundError, ValueError):
        return None


def recorded_parts(run: Run) -> tuple[list[dict], dict[str, np.ndarray]]:
    """The complete parts a run's ledger lists, and per shard the rows they answered (sorted). An entry cut short
    by a crash is skipped (its rows are redone); so is one whose rows another entry already covers (a retried write
    task).

    Entries are read in parallel, and the answered rows are a bitmap per shard (a byte per input row), so a resume
    of a big night costs the driver array work and a few bytes per answered row, not Python objects."""
    ledger = storage.join(run.uri, LEDGER)
    with ThreadPoolExecutor(16) as pool:
        entries = list(pool.map(lambda rel: _ledger_entry(run, storage.join(ledger, rel)),
                                storage.list_files(ledger)))
    parts, covered = [], {}
    for entry in entries:
        if entry is None:
            continue
        part, by_shard = entry
        if any(_any_covered(covered.get(shard), rows) for shard, rows in by_shard.items()):
            continue
        for shard, rows in by_shard.items():
            covered[shard] = _cover(covered.get(shard), rows)
        parts.append(part)
    return parts, {shard: np.flatnonzero(rows).astype(np.int32) for shard, rows in covered.items()}


def _ledger_entry(run: Run, uri: str) -> tuple[dict, dict[str, np.ndarray]] | None:
    """An entry's part and its rows per shard; None for an entry cut short or whose files are not all there."""
    try:
        table = storage.read_parquet(uri)
        part = json.loads(table.schema.metadata[b"part"])
    except (OSError, pa.ArrowException, KeyError, TypeError, ValueError):
        return None
    files = [run.staged(kind, name) for kind in ("results", "quarantine") for name in part[kind]]
    if not all(storage.exists(f) for f in files):
        return None
    shard = table.column("shard").combine_chunks().dictionary_encode()
    rows, codes = table.column("row").to_numpy(), shard.indices.to_numpy()
    return part, {name: rows[codes == i] for i, name in enumerate(shard.dictionary.to_pylist())}


def _any_covered(covered: np.ndarray | None, rows: np.ndarray) -> bool:
    return covered is not None and bool(covered[rows[rows < len(covered)]].any())


def _cover(covered: np.ndarray | None, rows: np.ndarray) -> np.ndarray:
    """``covered`` with ``rows`` set, grown (doubling) when a row lies past its end."""
    need = int(rows.max(initial=-1)) + 1
    if covered is None or need > len(covered):
        grown = np.zeros(max(need, 2 * (0 if covered is None else len(covered))), dtype=bool)
        if covered is not None:
            grown[:len(covered)] = covered
        covered = grown
    covered[rows] = True
    return covered


def finish(run: Run, rows_in: int, header: dict, parts: list[dict], reused: int, started: dt.datetime,
           seconds: float) -> dict:
    """Check that every input row came out once (results or quarantine) and commit the run; ``parts`` include the
    ``reused`` first ones of a resumed run."""
    totals = summarise(parts)
    if totals["rows_out"] + totals["rows_quarantined"] != rows_in:
        raise RuntimeError(
            f"row count mismatch: {rows_in} in, {totals['rows_out']} out + {totals['rows_quarantined']} "
            f"quarantined; run {run.uri} is not committed")
    old = parts[:reused]
    resumed = {"parts_reused": reused, "rows_reused": sum(p["rows_out"] + p["rows_quarantined"] for p in old)}
    return commit(run, {
        **header, **totals, "rows_in": rows_in, "resumed": resumed if reused else None,
        "started": started.isoformat(), "finished": dt.datetime.now(dt.timezone.utc).isoformat(),
        "seconds": round(seconds, 3), "users_per_s": round(rows_in / max(seconds, 1e-9), 1),
    })


def commit(run: Run, manifest: dict) -> dict:
    """Remove what the manifest does not vouch for (parts of failed write attempts, the ledger, the header), write
    the manifest (the commit point), then publish the run."""
    listed = {f"{kind}/{name}" for kind in ("results", "quarantine") for name in manifest[kind]}
    for rel in storage.list_files(run.uri):
        if rel not in listed:
            storage.delete(storage.join(run.uri, rel))
    manifest = {**manifest, "run_id": run.run_id, "run_date": run.run_date, "output": run.output}
    storage.write_json(storage.join(run.uri, MANIFEST), manifest)
    publish(manifest)
    return manifest


def publish(manifest: dict) -> None:
    """Make the date's visible folders hold exactly this committed run's parts, then ``_SUCCESS``; retire the date's
    other runs. Idempotent: parts already moved are skipped."""
    run = Run(manifest["output"], manifest["run_date"], manifest["run_id"])
    storage.delete(storage.join(run.date_uri, SUCCESS))  # the date is in flux for readers that check it
    parts = [(kind, name) for kind in ("results", "quarantine") for name in manifest[kind]]

    def move(part) -> None:
        staged, published = run.staged(*part), run.published(*part)
        if storage.exists(staged):
            storage.move(staged, published)
        elif not storage.exists(published):
            raise RuntimeError(f"run {run.uri}: {part[0]} part {part[1]} is neither staged nor published")

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(move, parts))
    for kind in ("results", "quarantine", LEDGER):  # empty now (on local disk the folders stay)
        storage.delete(storage.join(run.uri, kind))
    for folder, kind in ((run.date_uri, "results"), (run.quarantine_uri, "quarantine")):
        keep = {posixpath.basename(run.published(kind, name)) for name in manifest[kind]}
        for rel in storage.list_files(folder):
            if rel not in keep:  # an older run's parts (and the date's manifest copy, rewritten below)
                storage.delete(storage.join(folder, rel))
    storage.write_json(storage.join(run.date_uri, MANIFEST), manifest)
    storage.write_bytes(storage.join(run.date_uri, SUCCESS), b"")
    for other in _run_ids(run.output, run.run_date):
        if other != run.run_id:
            storage.delete(storage.join(runs_uri(run.output, run.run_date), f"run_id={other}"))


def is_published(manifest: dict) -> bool:
    run = Run(manifest["output"], manifest["run_date"], manifest["run_id"])
    return storage.exists(storage.join(run.date_uri, SUCCESS)) and \
        storage.read_json(storage.join(run.date_uri, MANIFEST)).get("run_id") == run.run_id


def _run_ids(output: str, run_date: str) -> list[str]:
    return [d[len("run_id="):] for d in storage.list_dirs(runs_uri(output, run_date)) if d.startswith("run_id=")]


def committed_run(output: str, run_date: str) -> dict | None:
    """The manifest of the date's latest committed run, if any."""
    manifests = []
    for run_id in _run_ids(output, run_date):
        uri = storage.join(runs_uri(output, run_date), f"run_id={run_id}", MANIFEST)
        if storage.exists(uri):
            manifests.append(storage.read_json(uri))
    return max(manifests, key=lambda m: m["finished"], default=None)


def committed_dates(output: str) -> list[str]:
    dates = [d[len("run_date="):] for d in storage.list_dirs(storage.join(output, RUNS)) if d.startswith("run_date=")]
    return sorted(d for d in dates if committed_run(output, d) is not None)


def read_committed(output: str, run_date: str | None = None, table: str = "results") -> pa.Table:
    """Results (or quarantine) of a committed run: the given date, else the latest committed date."""
    if run_date is None:
        dates = committed_dates(output)
        if not dates:
            raise FileNotFoundError(f"{output}: no committed run")
        run_date = dates[-1]
    manifest = committed_run(output, run_date)
    if manifest is None:
        raise FileNotFoundError(f"{output}: run_date={run_date} has no committed run")
    run = Run(output, run_date, manifest["run_id"])
    schema = schemas.RESULTS if table == "results" else schemas.QUARANTINE

    def part(name: str) -> pa.Table:
        try:
            return storage.read_parquet(run.published(table, name))
        except FileNotFoundError:  # committed, not yet published (its driver died while publishing)
            return storage.read_parquet(run.staged(table, name))

    with ThreadPoolExecutor(16) as pool:
        parts = list(pool.map(part, manifest[table]))
    return pa.concat_tables(parts) if parts else schema.empty_table()

"""Outputs any reader can trust (DESIGN.md §7): a plain read of the output root or of a date, by pyarrow.dataset,
pyarrow.parquet or DuckDB, returns exactly ``read_committed``'s rows, while an uncommitted run, quarantine rows, a
resume ledger and a run committed but not yet published are all present."""
import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from reasonrec import storage
from reasonrec.batch import commit
from reasonrec.batch.job import plan
from reasonrec.batch.stream import ANSWERED
from reasonrec.data import schemas


def block(users: list[str], bad: int = 0) -> pa.Table:
    """An answered block as the sink sees it: ``users`` answered, then ``bad`` rejected rows."""
    def row(i, user, rejected):
        return {"user_id": user, "task": "sequential", "candidates": None, "k": 2, "history": ["a"],
                "shard": "mem://s", "row": i, "raw": None, "error": "k: 0 out of range" if rejected else None,
                "stage": "validate" if rejected else None, "horizon": 0.5, "route": "low", "plan": "tool",
                **({} if rejected else {
                    "confidence": 0.9, "ranked": [{"item_id": "x", "score": 2.0}, {"item_id": "y", "score": 1.0}],
                    "tools": ["sasrec"], "trace": "EH: 0.50 (low)", "model_version": "v1", "latency_ms": 1.0,
                    "path": "tool", "vlm_called": False, "escalated": False, "overrode": False, "vlm_top": None,
                    "tools_top": "x"})}
    rows = [row(i, u, False) for i, u in enumerate(users)] + [row(len(users) + i, f"bad{i}", True) for i in range(bad)]
    return pa.Table.from_pylist(rows, schema=ANSWERED)


def committed(output: str, run_date: str, blocks: list[pa.Table], finished: str) -> dict:
    run = commit.Run.new(output, run_date)
    parts = [commit.write_part(b, run) for b in blocks]
    return commit.commit(run, {**commit.summarise(parts), "rows_in": sum(b.num_rows for b in blocks),
                               "finished": finished})


def plain(table: pa.Table) -> pa.Table:
    table = table.drop_columns([c for c in ("run_date",) if c in table.column_names])
    return table.select(schemas.RESULTS.names).sort_by("user_id")


def committed_rows(output: str) -> pa.Table:
    return pa.concat_tables([commit.read_committed(output, d) for d in commit.committed_dates(output)])


@pytest.fixture
def output(tmp_path):
    out = str(tmp_path / "results")
    committed(out, "2026-11-27", [block(["a", "b"], bad=1), block(["c"])], "1")
    committed(out, "2026-11-28", [block(["d", "e", "f"], bad=2)], "1")
    committed(out, "2026-11-28", [block(["d2", "e2"], bad=1)], "2")  # --force: the date's newer run replaces it
    unfinished = commit.Run.new(out, "2026-11-28")  # a run that died before its manifest, parts and ledger written
    commit.write_part(block(["zz-uncommitted", "zz-too"], bad=1), unfinished)
    storage.write_json(storage.join(unfinished.uri, commit.RUN_HEADER), {"requests": "x"})
    new_date = commit.Run.new(out, "2026-11-29")  # a date nobody committed yet
    commit.write_part(block(["zz-new-date"]), new_date)
    return out


def test_pyarrow_reads_exactly_the_committed_results(output):
    expected = plain(committed_rows(output))
    assert expected.column("user_id").to_pylist() == ["a", "b", "c", "d2", "e2"]
    for got in (pads.dataset(output, format="parquet", partitioning="hive").to_table(), pq.read_table(output)):
        assert plain(got).equals(expected)
    dated = pads.dataset(storage.join(output, "run_date=2026-11-28"), format="parquet").to_table()
    assert plain(dated).equals(plain(commit.read_committed(output, "2026-11-28")))
    with_date = pads.dataset(output, format="parquet", partitioning="hive").to_table()
    assert sorted(set(with_date.column("run_date").to_pylist())) == ["2026-11-27", "2026-11-28"]


@pytest.mark.parametrize("pattern", ["{out}", "{out}/**/*.parquet", "{out}/*/*.parquet", "{out}/run_date=*/*.parquet"])
def test_duckdb_reads_exactly_the_committed_results(output, pattern):
    query = f"SELECT * FROM read_parquet('{pattern.format(out=output)}', hive_partitioning = true)"
    got = duckdb.sql(query).to_arrow_table()
    assert plain(got.cast(pa.schema([*schemas.RESULTS, pa.field("run_date", pa.date32())]))).equals(
        plain(committed_rows(output)))
    one_date = duckdb.sql(f"SELECT count(*) FROM read_parquet('{output}/run_date=2026-11-27/*.parquet')").fetchall()
    assert one_date == [(3,)]


def test_quarantine_rows_are_readable_beside_and_never_mixed_in(output):
    quarantine = pads.dataset(storage.join(output, commit.QUARANTINE), format="parquet", partitioning="hive")
    table = quarantine.to_table()
    assert table.num_rows == 2  # the committed runs' one + one; the replaced run's two are gone
    assert set(table.column("reason").to_pylist()) == {"k: 0 out of range"}
    expected = pa.concat_tables([commit.read_committed(output, d, "quarantine")
                                 for d in commit.committed_dates(output)])
    assert sorted(table.column("source").to_pylist()) == sorted(expected.column("source").to_pylist())
    assert not any(name.endswith(".parquet") for name in storage.list_files(storage.join(output, commit.QUARANTINE)))


def test_the_layout_leaves_only_published_parts_and_markers_visible(output):
    visible = [f for f in storage.list_files(output) if not f.startswith("_")]
    assert all(f.split("/")[-1].startswith("_") or f.endswith(".parquet") for f in visible)
    assert {f.split("/")[0] for f in visible} == {"run_date=2026-11-27", "run_date=2026-11-28"}
    for date in ("2026-11-27", "2026-11-28"):
        manifest = commit.committed_run(output, date)
        assert commit.is_published(manifest)
        copy = storage.read_json(storage.join(output, f"run_date={date}", commit.MANIFEST))
        assert copy["run_id"] == manifest["run_id"]
    side = [f for f in storage.list_files(storage.join(output, commit.RUNS))]
    assert not any(f.endswith(".parquet") for f in side)  # staged parts and ledgers: no reader globs them


def test_a_run_committed_but_not_published_is_read_by_manifest_and_published_by_the_next_run(output, monkeypatch):
    """The driver dies between the manifest and publishing: ``read_committed`` already returns the new run, plain
    readers still see the old one whole, and the next run of the date publishes it before saying it is a no-op."""
    before = plain(pads.dataset(output, format="parquet", partitioning="hive").to_table())
    monkeypatch.setattr(commit, "publish", lambda manifest: None)
    manifest = committed(output, "2026-11-28", [block(["n1", "n2", "n3"])], "3")
    monkeypatch.undo()
    assert not commit.is_published(manifest)
    assert commit.read_committed(output, "2026-11-28").column("user_id").to_pylist() == ["n1", "n2", "n3"]
    assert plain(pads.dataset(output, format="parquet", partitioning="hive").to_table()).equals(before)

    from reasonrec.batch.config import ScoreConfig

    class Nothing:  # the no-op path does not look at the bundle beyond this
        def check(self):
            pass

    monkeypatch.setattr("reasonrec.batch.job.Scoring.load", lambda uri, config: Nothing())
    assert plan("unused", "unused", output, ScoreConfig(), "2026-11-28").manifest["noop"]
    assert commit.is_published(manifest)
    got = plain(pads.dataset(storage.join(output, "run_date=2026-11-28"), format="parquet").to_table())
    assert got.column("user_id").to_pylist() == ["n1", "n2", "n3"]


def test_results_carry_the_run_id_and_no_partition_key(output):
    table = commit.read_committed(output, "2026-11-28")
    assert "run_date" not in table.column_names
    run_ids = set(table.column("run_id").to_pylist())
    assert run_ids == {commit.committed_run(output, "2026-11-28")["run_id"]}
    assert np.all(pc.equal(table.column("model_version"), "v1").to_numpy(zero_copy_only=False))


def test_the_ledger_vouches_for_complete_parts_once(tmp_path):
    """A resumed run reuses the parts its ledger lists: a retried write (same rows twice) counts once, an entry whose
    part is gone or that was cut short counts not at all, and rows of several shards are told apart."""
    run = commit.Run.new(str(tmp_path / "out"), "2026-12-01")
    first = block(["a", "b", "c"])
    shard, row = first.schema.get_field_index("shard"), first.schema.get_field_index("row")
    other_shard = commit.write_part(first.set_column(shard, "shard", pa.array(["mem://t"] * 3)), run)
    once = [commit.write_part(first, run), commit.write_part(first, run)]  # a write task retried after it had written
    lost = commit.write_part(block(["d"]).set_column(row, "row", pa.array([7], pa.int64())), run)
    storage.delete(run.staged("results", lost["results"][0]))  # its part is gone: the row is redone
    with open(storage.join(run.uri, commit.LEDGER, "part-cut-short"), "wb") as f:
        f.write(b"PAR1 cut short")

    parts, answered = commit.recorded_parts(run)

    names = [p["results"][0] for p in parts]
    assert len(names) == 2 and other_shard["results"][0] in names
    assert len({p["results"][0] for p in once} & set(names)) == 1
    assert {shard: rows.tolist() for shard, rows in answered.items()} == {"mem://s": [0, 1, 2], "mem://t": [0, 1, 2]}


def test_an_unfinished_run_resumes_with_other_pools_but_not_with_other_settings(tmp_path):
    """A rerun that only sizes the actor pools differently (tool_actors, CPUs asked, threads) is the same work and
    resumes the unfinished run; one that answers differently (e.g. another shortlist) starts afresh."""
    output = str(tmp_path / "out")
    work = {"requests": "r", "bundle": "b", "config": {"shortlist": 20}}
    run = commit.start(output, "2026-11-28", {**work, "pools": {"tool_actors": 2}})[0]
    assert commit.start(output, "2026-11-28", {**work, "pools": {"tool_actors": 1}})[0] == run
    other = commit.start(output, "2026-11-28", {**work, "config": {"shortlist": 8}, "pools": {"tool_actors": 2}})[0]
    assert other != run

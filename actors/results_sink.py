"""Ray Data sink for batch results: parts from the write tasks, the manifest from the driver (DESIGN §7)."""
from __future__ import annotations

import datetime as dt
import time
from typing import Iterable

import pyarrow as pa
from ray.data import Datasink
from ray.data.block import Block, BlockAccessor

from reasonrec.batch import commit
from reasonrec.batch.planner_stage import ANSWERED


class ResultsDatasink(Datasink[dict]):
    def __init__(self, run: commit.Run, rows_in: int, header: dict):
        self.run = run
        self.rows_in = rows_in
        self.header = header  # what the manifest records about the inputs and settings
        self.started = dt.datetime.now(dt.timezone.utc)
        self.clock = time.perf_counter()
        self.manifest: dict | None = None

    def write(self, blocks: Iterable[Block], ctx) -> dict:
        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        tables = [t.select(ANSWERED.names).cast(ANSWERED) for t in tables if t.num_rows]
        return commit.write_part(pa.concat_tables(tables) if tables else ANSWERED.empty_table(), self.run)

    def on_write_complete(self, write_result) -> None:
        totals = commit.summarise(write_result.write_returns)
        if totals["rows_out"] + totals["rows_quarantined"] != self.rows_in:
            raise RuntimeError(
                f"row count mismatch: {self.rows_in} in, {totals['rows_out']} out + {totals['rows_quarantined']} "
                f"quarantined; run {self.run.uri} is not committed")
        seconds = time.perf_counter() - self.clock
        self.manifest = commit.commit(self.run, {
            **self.header, **totals, "rows_in": self.rows_in,
            "started": self.started.isoformat(), "finished": dt.datetime.now(dt.timezone.utc).isoformat(),
            "seconds": round(seconds, 3), "users_per_s": round(self.rows_in / max(seconds, 1e-9), 1),
        })

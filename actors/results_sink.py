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
    def __init__(self, run: commit.Run, rows_in: int, header: dict, reused: list[dict] | None = None,
                 rows_per_part: int | None = None):
        self.run = run
        self.rows_per_part = rows_per_part  # the unit a resumed run does not redo
        self.rows_in = rows_in
        self.header = header  # what the manifest records about the inputs and settings
        self.reused = reused or []  # parts of the interrupted run this one resumes
        self.started = dt.datetime.now(dt.timezone.utc)
        self.clock = time.perf_counter()
        self.manifest: dict | None = None

    @property
    def min_rows_per_write(self) -> int | None:
        return self.rows_per_part

    def write(self, blocks: Iterable[Block], ctx) -> dict:
        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        tables = [t.select(ANSWERED.names).cast(ANSWERED) for t in tables if t.num_rows]
        return commit.write_part(pa.concat_tables(tables) if tables else ANSWERED.empty_table(), self.run)

    def on_write_complete(self, write_result) -> None:
        self.manifest = commit.finish(self.run, self.rows_in, self.header, self.reused + write_result.write_returns,
                                      len(self.reused), self.started, time.perf_counter() - self.clock)

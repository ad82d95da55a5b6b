"""Ray Data sink for batch results: each write task commits its block's parts (``commit.write_part``); the driver
keeps what they wrote, and the job commits the run from it (DESIGN §7)."""
from __future__ import annotations

from typing import Iterable

import pyarrow as pa
from ray.data import Datasink
from ray.data.block import Block, BlockAccessor

from reasonrec.batch import commit
from reasonrec.batch.stream import ANSWERED, to_sink


class ResultsDatasink(Datasink[dict]):
    def __init__(self, run: commit.Run, rows_per_part: int | None = None):
        self.run = run
        self.rows_per_part = rows_per_part  # the unit a resumed run does not redo
        self.parts: list[dict] = []  # set on the driver when every write task is done

    @property
    def min_rows_per_write(self) -> int | None:
        return self.rows_per_part

    def write(self, blocks: Iterable[Block], ctx) -> dict:
        tables = [to_sink(BlockAccessor.for_block(b).to_arrow()) for b in blocks]
        tables = [t for t in tables if t.num_rows]
        return commit.write_part(pa.concat_tables(tables) if tables else ANSWERED.empty_table(), self.run)

    def on_write_complete(self, write_result) -> None:
        self.parts = list(write_result.write_returns)

"""Ray Data source of request shards: one read task per shard, each a plain ``read_shard`` call.

A shard that cannot be read, or lacks a required column, comes out as quarantine rows rather than failing
the job (``reasonrec.batch.shards``).
"""
from __future__ import annotations

import functools

from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from reasonrec.batch.shards import read_shard
from reasonrec.batch.stream import STREAM


class RequestShards(Datasource):
    def __init__(self, shards: list[tuple[str, int]], skip: dict | None = None, duplicates: dict | None = None):
        """``shards``: (uri, rows in its footer: lets Ray Data size blocks before reading); ``skip``: per shard,
        rows a resumed run already answered; ``duplicates``: per shard, rows that repeat an earlier (user_id, task)
        (``reasonrec.batch.duplicates``)."""
        super().__init__()
        self.shards = shards
        self.skip = skip or {}
        self.duplicates = duplicates or {}

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None) -> list[ReadTask]:
        # One task per shard whatever the requested parallelism: a shard is the unit of quarantine.
        return [
            ReadTask(functools.partial(_read, uri, self.skip.get(uri), self.duplicates.get(uri)),
                     BlockMetadata(num_rows=rows - len(self.skip.get(uri, ())), size_bytes=None, exec_stats=None,
                                   input_files=[uri]), schema=STREAM)
            for uri, rows in self.shards
        ]


def _read(uri: str, skip, duplicates):
    yield read_shard(uri, skip, duplicates)

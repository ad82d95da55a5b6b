"""The nightly job's duplicate scan on Ray tasks: ``reasonrec.batch.duplicates``' map (each task reads a group of
shards' keys and splits them into buckets) and reduce (one task per bucket). The driver holds object refs and the
repeated rows only, not every key of the night's input.
"""
from __future__ import annotations

import pyarrow as pa
import ray

from reasonrec.batch import duplicates

SHARDS_PER_TASK = 16  # shards one map task reads
SHARDS_PER_BUCKET = 256  # ~1.3M keys per reduce task at the default 5,000-row shards


def _map(uris: list[str], first_order: int, answered_tasks, max_k: int, buckets: int):
    per_shard = [duplicates.shard_keys(uri, first_order + i, answered_tasks, max_k, buckets)
                 for i, uri in enumerate(uris)]
    out = [pa.concat_tables([keys[b] for keys in per_shard]) for b in range(buckets)]
    return out[0] if buckets == 1 else out  # one return value per bucket


def _reduce(*parts: pa.Table) -> pa.Table:
    return duplicates.repeats(list(parts))


def find(shards: list[str], answered_tasks: tuple[str, ...], max_k: int,
         num_cpus: float = 0.25) -> dict[str, dict[int, str]]:
    """Per shard, each repeated row mapped to its first copy (``shard#row``), found by Ray tasks; a night small
    enough for one map task is scanned in this process (bounded work, and no task start-up to pay)."""
    if len(shards) <= SHARDS_PER_TASK:
        return duplicates.find(shards, answered_tasks, max_k)
    buckets = max(1, -(-len(shards) // SHARDS_PER_BUCKET))
    mapper = ray.remote(_map).options(num_returns=buckets, num_cpus=num_cpus)
    maps = [mapper.remote(shards[lo:lo + SHARDS_PER_TASK], lo, answered_tasks, max_k, buckets)
            for lo in range(0, len(shards), SHARDS_PER_TASK)]
    if buckets == 1:
        maps = [[m] for m in maps]
    reducer = ray.remote(_reduce).options(num_cpus=num_cpus)
    found = ray.get([reducer.remote(*[m[b] for m in maps]) for b in range(buckets)])
    return duplicates.as_map(shards, pa.concat_tables(found))

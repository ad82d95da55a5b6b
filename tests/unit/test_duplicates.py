"""The duplicate scan (reasonrec.batch.duplicates): which rows repeat an earlier request, in shard then row order,
the same whether the keys go through one bucket (in process) or many (the Ray tasks' map and reduce)."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reasonrec.batch import duplicates

TASKS = ("sequential", "direct", "explain")


def shard(path, rows: list[tuple]) -> str:
    user, task, k, item = zip(*rows)
    pq.write_table(pa.table({"user_id": list(user), "task": list(task), "k": pa.array(k, pa.int32()),
                             "item_id": list(item)}), path)
    return str(path)


def broken(path) -> str:
    path.write_bytes(b"not parquet")
    return str(path)


@pytest.fixture()
def shards(tmp_path):
    return [
        shard(tmp_path / "a.parquet", [("u1", "sequential", 10, None), ("u2", "direct", 0, None),  # k 0: no key
                                       ("u3", "explain", 1, "i1"), ("u1", "sequential", 5, None)]),
        shard(tmp_path / "b.parquet", [("u2", "direct", 10, None), ("u3", "explain", 1, "i2"),  # another item
                                       ("u3", "explain", 1, "i1"), ("u1", "direct", 10, None)]),
        broken(tmp_path / "broken.parquet"),  # unreadable: left to read_shard
        shard(tmp_path / "c.parquet", [("u2", "direct", 10, None), ("u1", "sequential", 10, None)]),
    ]


def test_each_repeat_points_at_the_first_good_copy(shards):
    a, b, c = shards[0], shards[1], shards[3]
    assert duplicates.find(shards, TASKS, 100) == {
        a: {3: f"{a}#0"},
        b: {2: f"{a}#2"},  # the explain request of the same (user, item); the other item is not a repeat
        c: {0: f"{b}#0", 1: f"{a}#0"},  # the malformed u2 direct in a (k 0) does not shadow b's good copy
    }


@pytest.mark.parametrize("buckets", [2, 7])
def test_buckets_find_what_one_bucket_finds(tmp_path, buckets):
    rng = np.random.default_rng(3)
    uris = [shard(tmp_path / f"s{s}.parquet", [(f"u{u}", str(rng.choice(["sequential", "direct"])), 10, None)
                                               for u in rng.integers(0, 60, size=40)]) for s in range(5)]
    mapped = [duplicates.shard_keys(uri, i, TASKS, 100, buckets) for i, uri in enumerate(uris)]
    assert all(len(parts) == buckets for parts in mapped)
    found = pa.concat_tables([duplicates.repeats([parts[b] for parts in mapped]) for b in range(buckets)])
    expected = duplicates.find(uris, TASKS, 100)
    assert sum(map(len, expected.values())) > 20
    assert duplicates.as_map(uris, found) == expected

import numpy as np
import pyarrow as pa

from reasonrec.data import prepared, schemas, split
from reasonrec.data.loaders import RawDataset


def interactions(rows):
    users, items, ts = zip(*rows)
    return schemas.conform(pa.table({"user_id": users, "item_id": items, "ts": ts}), schemas.INTERACTIONS, "t")


def test_leave_one_out_uses_time_order_and_min_len():
    table = interactions([("a", "x", 3), ("a", "y", 1), ("a", "z", 2), ("a", "w", 4), ("b", "x", 1), ("b", "y", 2)])
    parts = split.leave_one_out(table, min_len=3)
    assert parts["test"].to_pydict()["item_id"] == ["w"]
    assert parts["valid"].to_pydict()["item_id"] == ["x"]
    assert parts["train"].to_pydict()["item_id"] == ["y", "z", "x", "y"]  # b has 2 < 3: train only
    assert sum(p.num_rows for p in parts.values()) == table.num_rows


def test_candidates_are_unseen_unique_and_deterministic():
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"i{i}", t) for u in range(30) for t, i in enumerate(rng.choice(300, 8, replace=False))]
    table = interactions(rows)
    parts = split.leave_one_out(table)
    catalogue = np.array([f"i{i}" for i in range(300)], dtype=object)
    a = split.sample_candidates(table, parts["test"], catalogue, "test", n_negatives=99, seed=1)
    b = split.sample_candidates(table, parts["test"], catalogue, "test", n_negatives=99, seed=1)
    assert a.equals(b)
    seen = {}
    for u, i, _ in rows:
        seen.setdefault(u, set()).add(i)
    for row in a.to_pylist():
        assert len(row["negatives"]) == 99 == len(set(row["negatives"]))
        assert not seen[row["user_id"]] & set(row["negatives"])
        assert row["positive"] in seen[row["user_id"]]


def test_prepare_round_trip(tmp_path):
    table = interactions([(f"u{u}", f"i{(u + k) % 9}", k) for u in range(5) for k in range(4)])
    items = schemas.conform(pa.table({"item_id": [f"i{i}" for i in range(3)]}), schemas.ITEMS, "items")
    meta = prepared.prepare(RawDataset("tiny", table, items), str(tmp_path), n_negatives=2)
    assert meta["items"] == 8  # items without metadata rows are added
    data = prepared.PreparedData(str(tmp_path))
    test = data.eval_set("test")
    assert list(test.history.lengths) == [3] * 5  # train (2) + the validation item
    assert test.candidates.shape == (5, 3)
    assert (data.item_vocab.lookup(test.target) == [f"i{(u + 3) % 9}" for u in range(5)]).all()

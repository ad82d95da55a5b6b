import numpy as np
import pytest
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


def test_time_split_trains_on_nothing_after_the_cut(tmp_path):
    rng = np.random.default_rng(3)
    rows = [(f"u{u}", f"i{i}", int(t)) for u in range(40)
            for i, t in zip(rng.choice(60, 10, replace=False), np.sort(rng.integers(0, 1000, 10)))]
    table = interactions(rows)
    items = schemas.conform(pa.table({"item_id": [f"i{i}" for i in range(60)]}), schemas.ITEMS, "items")
    meta = prepared.prepare(RawDataset("t", table, items), str(tmp_path), n_negatives=5, cut=500)
    data = prepared.PreparedData(str(tmp_path))
    assert meta["split"] == "time" and meta["cut"] == 500
    train, valid, test = (data.table(n).to_pydict() for n in ("train", "valid", "test"))
    assert max(train["ts"]) < 500 and max(valid["ts"]) < 500 and min(test["ts"]) >= 500
    by_user = {}
    for u, i, t in rows:
        by_user.setdefault(u, []).append((t, i))
    for u, i, t in zip(test["user_id"], test["item_id"], test["ts"]):  # the first purchase at or after the cut
        assert (t, i) == min(x for x in by_user[u] if x[0] >= 500)
    for u, i in zip(valid["user_id"], valid["item_id"]):  # the last one before it
        assert i == max(x for x in by_user[u] if x[0] < 500)[1]
    assert sorted(valid["user_id"]) == sorted(test["user_id"]) == sorted(
        u for u, xs in by_user.items() if any(t >= 500 for t, _ in xs) and sum(t < 500 for t, _ in xs) >= 2)
    kept = data.table("interactions")
    assert kept.num_rows == len(train["ts"]) + len(valid["ts"]) + len(test["ts"])
    clicks = data.table("ctr").to_pydict()  # CTR rows: the evaluated users only, nothing after the cut trained on
    assert set(clicks["user_id"]) == set(test["user_id"])
    test_history = data.eval_set("test").history
    assert (test_history.lengths == [sum(t < 500 for t, _ in by_user[u]) for u in test_history.user_ids]).all()


def test_time_split_refuses_a_cut_outside_the_data():
    table = interactions([("a", "x", 1), ("a", "y", 2), ("a", "z", 3)])
    with pytest.raises(ValueError, match="every interaction is before it"):
        split.time_split(table, 10)
    assert split.parse_cut("1998-01-01") == 883612800 and split.parse_cut("883612800") == 883612800
    with pytest.raises(ValueError, match="not a date"):
        split.parse_cut("yesterday")


def test_domains_never_collide_and_map_back_to_the_source_ids(tmp_path):
    from reasonrec.data import domains

    a = interactions([(f"{u}", f"{(u + k) % 7}", k) for u in range(6) for k in range(4)])
    b = interactions([(f"{u}", f"{(u * 2 + k) % 7}", k) for u in range(6) for k in range(5)])  # the same raw ids
    items = schemas.conform(pa.table({"item_id": [str(i) for i in range(7)], "title": [f"t{i}" for i in range(7)]}),
                            schemas.ITEMS, "items")
    both = domains.combine([RawDataset("x", a, items), RawDataset("y", b, items)], ["beauty", "toys"])
    assert both.interactions.num_rows == a.num_rows + b.num_rows
    assert len(set(both.interactions["user_id"].to_pylist())) == 12 and both.items.num_rows == 14
    domain, original = domains.split_ids(both.interactions.column("item_id"))
    assert list(original) == a["item_id"].to_pylist() + b["item_id"].to_pylist()
    assert list(domain) == ["beauty"] * a.num_rows + ["toys"] * b.num_rows
    meta = prepared.prepare(both, str(tmp_path), n_negatives=3, domains=["beauty", "toys"])
    assert meta["domains"] == ["beauty", "toys"] and meta["dataset"] == "beauty+toys"
    for bad in (["a", "a"], ["a:b", "c"], ["", "c"]):
        with pytest.raises(ValueError, match="domain"):
            domains.combine([RawDataset("x", a, items), RawDataset("y", b, items)], bad)


def test_results_on_a_multi_domain_catalogue_are_scored_per_domain(tmp_path):
    from reasonrec.data import domains
    from reasonrec.evaluator import evaluate_results

    a = interactions([(f"{u}", f"{(u + k) % 9}", k) for u in range(4) for k in range(4)])
    items = schemas.conform(pa.table({"item_id": [str(i) for i in range(9)]}), schemas.ITEMS, "items")
    both = domains.combine([RawDataset("x", a, items), RawDataset("y", a, items)], ["beauty", "toys"])
    prepared.prepare(both, str(tmp_path), n_negatives=3, domains=["beauty", "toys"])
    data = prepared.PreparedData(str(tmp_path))
    test = data.table("test").to_pydict()
    # Beauty users get their target first, toys users a list without it.
    ranked = [[{"item_id": i if u.startswith("beauty:") else f"toys:{(int(i.split(':')[1]) + 1) % 9}",
                "score": 1.0}] * 1 + [{"item_id": f"{u.split(':')[0]}:x{j}", "score": -j} for j in range(9)]
              for u, i in zip(test["user_id"], test["item_id"])]
    results = pa.table({"user_id": test["user_id"], "task": ["sequential"] * len(ranked),
                        "ranked": pa.array(ranked, schemas.RANKED)})
    report = evaluate_results(results, data, "sequential")
    assert report["by_domain"]["beauty"]["HR@5"] == 1.0 and report["by_domain"]["toys"]["HR@5"] == 0.0
    assert report["metrics"]["HR@5"] == 0.5
    top = [r[0]["item_id"] for r in ranked]
    domain, original = domains.split_ids(pa.array(top))
    assert list(domain) == [u.split(":")[0] for u in test["user_id"]]
    assert list(original[:4]) == [a_i for a_i in a.filter(pa.array([k == 3 for k in a["ts"].to_pylist()]))[
        "item_id"].to_pylist()]


def test_explanations_come_from_training_purchases_split_8_1_1(tmp_path):
    rng = np.random.default_rng(5)
    rows = [(f"u{u}", f"i{i}", t) for u in range(300) for t, i in enumerate(rng.choice(50, 8, replace=False))]
    table = interactions(rows)
    table = table.set_column(3, "rating", pa.array(rng.integers(0, 7, table.num_rows).astype(np.float32)))
    review = np.array([f"review {i}" for i in range(table.num_rows)], dtype=object)
    review[::17] = None
    table = table.set_column(4, "review", pa.array(review, pa.string()))
    items = schemas.conform(pa.table({"item_id": [f"i{i}" for i in range(50)]}), schemas.ITEMS, "items")
    meta = prepared.prepare(RawDataset("t", table, items), str(tmp_path), n_negatives=5)
    data = prepared.PreparedData(str(tmp_path))
    explain = data.table("explain").to_pandas()
    source = table.to_pandas()
    usable = source[source["review"].notna() & source["rating"].between(1, 5) & (source["ts"] < 6)]
    assert len(explain) == len(usable) and sum(meta["explain_rows"].values()) == len(usable)
    assert set(explain["review"]) == set(usable["review"])  # the train part only: never a held-out item
    shares = explain["split"].value_counts(normalize=True)
    assert abs(shares["train"] - 0.8) < 0.03 and abs(shares["valid"] - 0.1) < 0.03
    test, history = data.explain_rows("test")
    position = dict(zip(zip(source["user_id"], source["item_id"]), source["ts"]))
    for k, (u, i) in enumerate(zip(test["user_id"].to_pylist(), test["item_id"].to_pylist())):
        before = data.item_vocab.lookup(history.items[history.offsets[k]:history.offsets[k + 1]])
        assert [position[(u, b)] for b in before] == list(range(position[(u, i)]))

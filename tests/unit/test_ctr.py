"""The CTR protocol's rows, its metrics against hand-computed cases, and the CTR tools on a tiny set."""
import math

import numpy as np
import pyarrow as pa
import pytest
import torch
from safetensors.torch import load_file, save_file

from reasonrec.data import ctr, schemas, split
from reasonrec.metrics import auc_and_logloss
from reasonrec.tools import Tool
from reasonrec.train.loop import fit
from reasonrec.train.tools import build_tool


def test_auc_and_logloss_hand_cases():
    # positives 0.9, 0.4; negatives 0.1, 0.6: 3 of the 4 (positive, negative) pairs are ordered right
    got = auc_and_logloss(np.array([1, 0, 1, 0]), np.array([0.9, 0.1, 0.4, 0.6]))
    assert got["AUC"] == pytest.approx(0.75)
    assert got["LogLoss"] == pytest.approx(-(math.log(0.9) + math.log(0.4)) / 2)
    assert auc_and_logloss(np.array([1, 0]), np.array([0.5, 0.5]))["AUC"] == pytest.approx(0.5)  # a tie is half
    assert auc_and_logloss(np.array([1, 0]), np.array([1.0, 0.0]))["LogLoss"] < 1e-6  # clipped, not infinite
    with pytest.raises(ValueError, match="clicks and non-clicks"):
        auc_and_logloss(np.array([1, 1]), np.array([0.3, 0.6]))


def purchases(users: int = 40, items: int = 60, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    rows = [(f"u{u}", f"i{i}", t) for u in range(users)
            for t, i in enumerate(rng.choice(items, rng.integers(2, 12), replace=False))]
    user, item, ts = zip(*rows)
    return schemas.conform(pa.table({"user_id": user, "item_id": item, "ts": ts}), schemas.INTERACTIONS, "t")


def test_ctr_split_ratio_users_and_no_leakage():
    table = purchases()
    catalogue = np.array([f"i{i}" for i in range(60)], dtype=object)
    rows = ctr.sample_ctr(table, catalogue, min_len=3).to_pylist()
    again = ctr.sample_ctr(table, catalogue, min_len=3)
    assert again.to_pylist() == rows  # seeded
    loo = split.leave_one_out(table, min_len=3)
    bought = {}
    for r in table.to_pylist():
        bought.setdefault(r["user_id"], []).append((r["ts"], r["item_id"]))
    evaluated = {u for u, items in bought.items() if len(items) >= 3}
    for part in ("train", "valid", "test"):
        mine = [r for r in rows if r["split"] == part]
        assert {r["user_id"] for r in mine} == evaluated  # every evaluated user in all three parts
        clicks = sum(r["label"] for r in mine)
        assert len(mine) == 5 * clicks  # 1 click : 4 non-clicks
    for r in rows:
        history = [i for _, i in sorted(bought[r["user_id"]])]
        if r["label"]:
            assert history[r["prefix"]] == r["item_id"]  # the click is the purchase its prefix precedes
        else:
            assert r["item_id"] not in history  # a negative was never purchased by its user
    # CTR-test clicks are exactly the leave-one-out test items; no CTR-train click is a held-out item
    held = {(r["user_id"], r["item_id"]) for p in ("valid", "test") for r in loo[p].to_pylist()}
    test_clicks = {(r["user_id"], r["item_id"]) for r in rows if r["split"] == "test" and r["label"]}
    assert test_clicks == {(r["user_id"], r["item_id"]) for r in loo["test"].to_pylist()}
    assert not held & {(r["user_id"], r["item_id"]) for r in rows if r["split"] == "train" and r["label"]}


def test_a_user_without_room_for_negatives_is_named():
    rows = [("u0", f"i{i}", i) for i in range(4)] + [("u1", f"i{i}", i) for i in range(3)]
    user, item, ts = zip(*rows)
    table = schemas.conform(pa.table({"user_id": user, "item_id": item, "ts": ts}), schemas.INTERACTIONS, "t")
    catalogue = np.array([f"i{i}" for i in range(6)], dtype=object)  # u0 has 2 unpurchased items, u1 has 3
    with pytest.raises(ValueError, match=r"CTR: user_id 'u0' purchased 4 of the 6 items.*\(2 such users\)"):
        ctr.sample_ctr(table, catalogue, min_len=3)


def test_fresh_negatives_are_never_a_click_of_their_user(synthetic_data):
    tool, train, _, _ = build_tool("dcnv2", {}, synthetic_data)
    items = tool.fresh_negatives(train, np.random.default_rng(0))
    clicked = train.labels > 0
    np.testing.assert_array_equal(items[clicked], train.items[clicked])
    assert (items[~clicked] != train.items[~clicked]).mean() > 0.9 and items.min() >= 1
    keys = set(zip(train.history.user_ids[clicked], train.items[clicked]))
    assert not keys & set(zip(train.history.user_ids[~clicked], items[~clicked]))


@pytest.mark.parametrize("name", ["dcnv2", "xdeepfm"])
def test_ctr_tool_beats_popularity(synthetic_data, name):
    torch.manual_seed(0)
    torch.set_num_threads(2)
    small = {"hidden": (64,), **({"cin": (16, 16)} if name == "xdeepfm" else {})}  # a tiny set, a small model
    tool, train, valid, _ = build_tool(name, {"epochs": 12, "patience": 3, "batch_size": 512, "lr": 1e-2, **small},
                                       synthetic_data)
    fit(tool, train, valid)
    test = synthetic_data.ctr_set("test")
    with torch.no_grad():
        mine = auc_and_logloss(test.labels, torch.sigmoid(tool.logits_of(test.history, test.items)).numpy())
    clicks = np.bincount(train.items[train.labels > 0], minlength=synthetic_data.n_items + 1)
    popularity = auc_and_logloss(test.labels, clicks[test.items] / clicks.max())
    assert mine["AUC"] > popularity["AUC"] + 0.02, (name, mine, popularity)
    assert mine["LogLoss"] < 0.5  # below the 1:4 base rate's entropy (0.500)


def test_an_item_never_clicked_in_training_is_scored_without_its_id(synthetic_data, tmp_path):
    """Such an item reached training only as a negative: its id row must not decide its click probability."""
    torch.manual_seed(0)
    tool, train, valid, _ = build_tool("dcnv2", {"epochs": 1, "batch_size": 512, "hidden": (32,)}, synthetic_data)
    cold = 1 + int(np.argmin(np.bincount(train.items[train.labels > 0], minlength=tool.n_items + 1)[1:]))
    train = train.select(np.flatnonzero((train.items != cold) | (train.labels == 0)))  # its clicks held out
    fit(tool, train, valid)
    clicked = np.zeros(synthetic_data.n_items + 1, dtype=bool)
    clicked[train.items[train.labels > 0]] = True
    np.testing.assert_array_equal(tool.item_clicked.numpy(), clicked)
    warm = np.flatnonzero(clicked)[0]
    history = synthetic_data.ctr_set("test").history.select(np.zeros(2, dtype=np.int64))
    items = np.array([cold, warm])
    with torch.no_grad():
        before = tool.logits_of(history, items)
        tool.item_emb.weight[items] += 1.0
        after = tool.logits_of(history, items)
    assert after[0] == before[0] and after[1] != before[1]
    # A CTR tool saved before the clicked items were recorded loads and scores every item by its id, as it did.
    tool.save(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    save_file({k: v for k, v in state.items() if k != "item_clicked"}, tmp_path / "model.safetensors")
    assert Tool.load(tmp_path).item_clicked.all()

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reasonrec.data import loaders, schemas
from tests.conftest import require_shared_data


def write(path, text):
    path.write_text(text)
    return str(path)


def test_amazon_seq_small(tmp_path):
    write(tmp_path / "sequential_data.txt", "1 5 6 7\n2 7 5\n")
    write(tmp_path / "item_titles.tsv", "item_id\tasin\ttitle\n5\tA\tRed \"Lip\" stick\n7\tB\tBlue pen\n")
    (tmp_path / "item2attributes.json").write_text(json.dumps({"5": [1, 2], "6": [3]}))
    raw = loaders.load(str(tmp_path), "amazon-seq")
    assert raw.interactions.schema.equals(schemas.INTERACTIONS)
    assert raw.interactions.to_pydict()["item_id"] == ["5", "6", "7", "7", "5"]
    assert raw.interactions.to_pydict()["ts"] == [0, 1, 2, 0, 1]  # order, no timestamps in this format
    items = {r["item_id"]: r for r in raw.items.to_pylist()}
    assert items["5"]["title"] == 'Red "Lip" stick' and items["5"]["categories"] == ["attr_1", "attr_2"]
    assert items["6"]["title"] is None and items["7"]["categories"] is None


@pytest.mark.parametrize("text, message", [
    ("", "file is empty"),
    ("1 5 6\n2 x 7\n", ":2: id 'x' is not a non-negative integer"),
    ("1 5 6\n2\n", ":2: a line needs a user id and at least one item"),
])
def test_amazon_seq_bad_input_names_the_line(tmp_path, text, message):
    path = write(tmp_path / "seq.txt", text)
    with pytest.raises(ValueError, match=message):
        loaders.load(path, "amazon-seq")


def test_recbole_small_and_errors(tmp_path):
    write(tmp_path / "d.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                 "u1\ti1\t4\t100\nu1\ti2\t5\t50\n")
    write(tmp_path / "d.item", "item_id:token\tmovie_title:token_seq\tclass:token_seq\ni1\tHeat\tAction Crime\n")
    raw = loaders.load(str(tmp_path), "recbole")
    assert raw.interactions.column("ts").to_pylist() == [100, 50]
    assert raw.interactions.column("rating").type == pa.float32()
    assert raw.items.to_pylist()[0]["categories"] == ["Action", "Crime"]
    assert raw.interactions.column("review").null_count == 2
    reviewed = tmp_path / "reviewed"
    reviewed.mkdir()
    write(reviewed / "r.inter", "user_id:token\titem_id:token\trating:float\treview:token_seq\nu1\ti1\t4\tgreat fit\n")
    assert loaders.load(str(reviewed), "recbole").interactions.column("review").to_pylist() == ["great fit"]

    bad = tmp_path / "bad"
    bad.mkdir()
    write(bad / "b.inter", "user_id:token\titem_id:token\nu1\ti1\nu2\t\n")
    with pytest.raises(ValueError, match=r"b.inter:3: field 'item_id' is empty"):
        loaders.load(str(bad), "recbole")
    write(bad / "b.inter", "user:token\titem_id:token\nu1\ti1\n")
    with pytest.raises(ValueError, match="missing required field 'user_id'"):
        loaders.load(str(bad), "recbole")


def test_parquet_missing_column_is_named(tmp_path):
    pq.write_table(pa.table({"user_id": ["a"], "ts": [1]}), tmp_path / "interactions.parquet")
    with pytest.raises(ValueError, match=r"interactions.parquet: missing required column\(s\) \['item_id'\]"):
        loaders.load(str(tmp_path), "parquet")


def test_parquet_null_user_is_named(tmp_path):
    pq.write_table(pa.table({"user_id": ["a", None], "item_id": ["x", "y"], "ts": [1, 2]}),
                   tmp_path / "interactions.parquet")
    with pytest.raises(ValueError, match="column 'user_id' has 1 null value"):
        loaders.load(str(tmp_path), "parquet")


def test_real_datasets_have_published_counts():
    data = require_shared_data()
    beauty = loaders.load(str(data / "amazon_beauty"), "amazon-seq")
    assert beauty.interactions.num_rows == 198_502
    assert len(set(beauty.interactions.column("user_id").to_pylist())) == 22_363
    assert beauty.items.num_rows == 12_101
    assert sum(t is not None and t != "" for t in beauty.items.column("title").to_pylist()) >= 12_000
    ml = loaders.load(str(data / "movielens_100k"), "recbole")
    assert ml.interactions.num_rows == 100_000 and ml.items.num_rows == 1_682
    assert ml.items.to_pylist()[0]["title"] == "Toy Story"


def test_vocab_index_agrees_on_both_lookup_paths():
    """Few ids go through a dict, many through pandas' hash index: the same answers, unknowns -1."""
    from reasonrec.data.vocab import SMALL, Vocab

    vocab = Vocab([f"i{n:05d}" for n in range(5000)], offset=1)
    queries = np.array([f"i{n:05d}" for n in np.random.default_rng(0).integers(-50, 5050, 3 * SMALL)], dtype=object)
    queries[::97] = None
    many = vocab.index(queries)
    few = np.concatenate([vocab.index(queries[lo:lo + SMALL // 4]) for lo in range(0, len(queries), SMALL // 4)])
    np.testing.assert_array_equal(many, few)
    known = np.array([q is not None and q.startswith("i0") and 0 <= int(q[1:]) < 5000 for q in queries])
    np.testing.assert_array_equal(many >= 1, known)
    np.testing.assert_array_equal(vocab.lookup(many[known]), queries[known])
    assert vocab.index(pa.array(["i00007", "nope"])).tolist() == [8, -1]

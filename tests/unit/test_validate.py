"""The request checks of the nightly job and Serve, on plain Arrow rows (no bundle)."""
import pyarrow as pa

from reasonrec.batch.shards import conform
from reasonrec.batch.validate import Validator
from reasonrec.data.vocab import Vocab


def test_an_explain_row_needs_a_known_item_and_a_rating_from_1_to_5():
    rows = pa.table({
        "user_id": ["ok", "no-item", "unknown", "no-rating", "high", "low", "seq"],
        "task": ["explain"] * 6 + ["sequential"],
        "k": [1] * 7,
        "item_id": ["a", None, "zz", "a", "b", "b", None],
        "rating": [4.0, 3.0, 3.0, None, 7.0, 0.5, None],
    })
    validate = Validator(Vocab(["a", "b"], offset=1), max_k=10, answered_tasks=("sequential", "explain"))
    errors = validate(conform(rows, "mem://shard")).column("error").to_pylist()
    assert errors == [None, "item_id: task 'explain' needs the item to explain", "item_id: 'zz' not in the catalogue",
                      "rating: task 'explain' needs the user's star rating (1-5)", "rating: 7.0 outside 1-5",
                      "rating: 0.5 outside 1-5", None]

"""New arrivals in the user's categories: the places of the VLM's listing the tools' vote does not fill."""
import numpy as np
import pyarrow as pa

from reasonrec.arrivals import Arrivals, first_bought, with_arrivals
from reasonrec.data.sequences import Sequences
from reasonrec.data.vocab import Vocab

ITEMS = pa.table({
    "item_id": [f"i{k}" for k in range(1, 9)],
    # "Beauty" is on every item: it says nothing of a user's taste
    "categories": [["Beauty", "Lipstick"], ["Beauty", "Serum"], ["Beauty", "Lipstick"], ["Beauty", "Serum"],
                   ["Beauty", "Lipstick"], ["Beauty", "Serum"], ["Beauty", "Lipstick"], None],
})
VOCAB = Vocab(ITEMS.column("item_id").to_numpy(zero_copy_only=False), offset=1)
# i1-i4 bought early, i5-i7 late (i7 last), i8 never: the newest half of the catalogue is i8, i7, i6, i5
LOG = pa.table({"user_id": ["a", "b", "a", "b", "c", "c", "d", "d"],
                "item_id": ["i1", "i2", "i3", "i4", "i5", "i6", "i7", "i1"],
                "ts": [1, 2, 3, 4, 100, 101, 102, 5]})


def histories(*rows: list[str]) -> Sequences:
    lengths = [len(r) for r in rows]
    items = VOCAB.index(np.array([i for r in rows for i in r], dtype=object))
    return Sequences(np.array([f"u{k}" for k in range(len(rows))], dtype=object),
                     np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), items.astype(np.int64))


def ids(matrix: np.ndarray) -> list[list[str]]:
    return [[VOCAB.ids[i - 1] if i > 0 else None for i in row] for row in matrix]


def test_the_newest_items_of_the_users_categories_are_picked_newest_first():
    first = first_bought(LOG)
    assert dict(zip(first.column("item_id").to_pylist(), first.column("first_ts").to_pylist()))["i1"] == 1
    arrivals = Arrivals(ITEMS, first, VOCAB, share=0.5)
    none_taken = np.zeros((2, 0), dtype=np.int64)
    picks = arrivals.pick(histories(["i1", "i3"], ["i2"]), 2, none_taken)
    # a Lipstick buyer: the new Lipsticks, i7 (newer) before i5; a Serum buyer: the new Serum, then i8, which has no
    # category against it, before the Lipsticks
    assert ids(picks) == [["i7", "i5"], ["i6", "i8"]]


def test_what_the_user_has_or_the_listing_holds_is_never_picked():
    arrivals = Arrivals(ITEMS, first_bought(LOG), VOCAB, share=0.5)
    history = histories(["i1", "i7"])
    taken = VOCAB.index(np.array(["i5"], dtype=object))[None, :]
    picks = arrivals.pick(history, 4, taken)
    assert "i7" not in ids(picks)[0] and "i5" not in ids(picks)[0]
    assert ids(picks)[0][-2:] == [None, None]  # only i8 and i6 are left among the newest four
    # from the row's own candidates only (direct): i6 is not among them
    candidates = VOCAB.index(np.array(["i2", "i8", "i3", "i4"], dtype=object))[None, :]
    assert ids(arrivals.pick(history, 2, taken, candidates)) == [["i8", None]]


def test_a_listing_gives_its_last_places_to_the_picks_and_keeps_the_vote_where_none_qualifies():
    shortlist = np.array([[1, 2, 3, 4], [1, 2, 3, 4]])
    picks = np.array([[7, 8], [6, -1]])
    assert with_arrivals(shortlist, picks).tolist() == [[1, 2, 7, 8], [1, 2, 6, 4]]
    assert with_arrivals(shortlist, np.zeros((2, 0), dtype=np.int64)).tolist() == shortlist.tolist()

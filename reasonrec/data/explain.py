"""Explanation data (paper Appendix A): the reviews of the training purchases, split 8:1:1 at random.

Only purchases of the leave-one-out (or time) training part are used, so that no explanation the VLM trains on or
is evaluated on names an item the sequential or direct evaluation holds out. Each row keeps ``prefix``: how many of
the user's purchases, in time order, precede it (its history). A dataset without review text has no such rows.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reasonrec.data import split

SCHEMA = pa.schema([
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("rating", pa.float32(), nullable=False),
    pa.field("review", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("prefix", pa.int32(), nullable=False),
])
SHARES = (0.8, 0.1, 0.1)


def sample_explain(train: pa.Table, seed: int = 12345) -> pa.Table:
    """The explanation rows of the training purchases that have a review and a 1-5 star rating."""
    table = split.sort_interactions(train)
    pos, _ = split.positions(table)
    rating = table.column("rating")
    usable = pc.and_(pc.and_(pc.is_valid(table.column("review")),
                             pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(table.column("review"))), 0)),
                     pc.and_(pc.greater_equal(rating, 1), pc.less_equal(rating, 5)))
    keep = np.asarray(pc.fill_null(usable, False))
    draw = np.random.default_rng([seed, 3]).random(table.num_rows)[keep]
    part = np.where(draw < SHARES[0], "train", np.where(draw < SHARES[0] + SHARES[1], "valid", "test"))
    rows = table.filter(pa.array(keep))
    return pa.table({
        "user_id": rows.column("user_id"), "item_id": rows.column("item_id"),
        "rating": rows.column("rating").cast(pa.float32()), "review": rows.column("review"),
        "split": pa.array(part, pa.string()), "prefix": pa.array(pos[keep].astype(np.int32), pa.int32()),
    }, schema=SCHEMA)

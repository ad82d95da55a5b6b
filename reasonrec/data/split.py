"""Leave-one-out split and sampled candidate lists (vectorised over all users)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reasonrec.data import schemas
from reasonrec.data.vocab import Vocab


def sort_interactions(interactions: pa.Table) -> pa.Table:
    # Arrow's sort is stable, so same-timestamp ties keep the file order.
    return interactions.sort_by([("user_id", "ascending"), ("ts", "ascending")])


def positions(sorted_interactions: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Per row: index within its user's sequence and that user's sequence length."""
    users = sorted_interactions.column("user_id").combine_chunks()
    codes = np.asarray(pc.dictionary_encode(users).indices)
    starts = np.concatenate([[0], np.flatnonzero(np.diff(codes)) + 1])
    lengths = np.diff(np.concatenate([starts, [len(codes)]]))
    pos = np.arange(len(codes)) - np.repeat(starts, lengths)
    return pos, np.repeat(lengths, lengths)


def leave_one_out(interactions: pa.Table, min_len: int = 3) -> dict[str, pa.Table]:
    """Last interaction = test, second last = valid, the rest = train.

    Users with fewer than ``min_len`` interactions keep everything in train (they still count for the
    evidence horizon and the tools, but are not evaluated).
    """
    table = sort_interactions(interactions)
    pos, length = positions(table)
    from_end = length - 1 - pos
    evaluated = length >= min_len
    test = evaluated & (from_end == 0)
    valid = evaluated & (from_end == 1)
    return {
        "train": table.filter(pa.array(~(test | valid))),
        "valid": table.filter(pa.array(valid)),
        "test": table.filter(pa.array(test)),
    }


def sample_candidates(interactions: pa.Table, targets: pa.Table, catalogue: np.ndarray, split: str,
                      n_negatives: int = 99, seed: int = 12345) -> pa.Table:
    """For each target row: the positive plus ``n_negatives`` items the user never interacted with.

    Uniform without replacement over the unseen items: random keys with seen items set to +inf, then the
    smallest keys win. Chunked so that memory stays at ~50M keys whatever the catalogue size.
    """
    rng = np.random.default_rng(seed)
    n_items = len(catalogue)
    if n_negatives >= n_items:
        raise ValueError(f"--negatives {n_negatives}: the catalogue has only {n_items} items; sample fewer negatives "
                         "than there are items")
    users = targets.column("user_id").to_numpy(zero_copy_only=False)
    seen_rows = Vocab(users).index(interactions.column("user_id"))
    keep = seen_rows >= 0
    seen_rows = seen_rows[keep]
    seen_items = Vocab(catalogue).index(interactions.column("item_id"))[keep]
    order = np.argsort(seen_rows, kind="stable")
    seen_rows, seen_items = seen_rows[order], seen_items[order]
    bounds = np.searchsorted(seen_rows, np.arange(len(users) + 1))

    negatives = np.empty((len(users), n_negatives), dtype=np.int64)
    valid = np.empty((len(users), n_negatives), dtype=bool)
    chunk = max(1, 50_000_000 // max(n_items, 1))
    for lo in range(0, len(users), chunk):
        hi = min(lo + chunk, len(users))
        keys = rng.random((hi - lo, n_items))
        rows = seen_rows[bounds[lo]:bounds[hi]] - lo
        keys[rows, seen_items[bounds[lo]:bounds[hi]]] = np.inf
        k = min(n_negatives, n_items - 1)
        picked = np.argpartition(keys, k, axis=1)[:, :n_negatives] if k < n_items else np.argsort(keys, axis=1)
        negatives[lo:hi] = picked[:, :n_negatives]
        valid[lo:hi] = np.isfinite(np.take_along_axis(keys, picked[:, :n_negatives], axis=1))
    counts = valid.sum(axis=1)
    flat = catalogue[negatives[valid]]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.Table.from_arrays([
        targets.column("user_id"),
        pa.array(np.full(len(users), split)),
        targets.column("item_id"),
        pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=pa.string())),
    ], schema=schemas.CANDIDATES)


def time_split(interactions: pa.Table, cut: int, min_len: int = 3) -> tuple[pa.Table, dict[str, pa.Table]]:
    """Train before ``cut`` (epoch seconds), test after it: the time-shift protocol (paper Fig. A2).

    A user is evaluated when they have at least ``min_len - 1`` interactions before the cut and one at or after it:
    their first interaction at or after the cut is the test item, their last one before it the validation item, the
    rest train. Every other interaction at or after the cut is left out, so nothing after the cut is trained on.
    Returns the interactions kept (what the prepared folder records) and the three parts.
    """
    table = sort_interactions(interactions)
    ts = table.column("ts").to_numpy()
    after = ts >= cut
    if after.all() or not after.any():
        raise ValueError(f"--cut {cut}: every interaction is {'after' if after.all() else 'before'} it (ts from "
                         f"{ts.min()} to {ts.max()}); choose a cut inside the data's time range")
    pos, _ = positions(table)
    codes = _user_codes(table)
    n_users = int(codes.max()) + 1
    n_before = np.bincount(codes[~after], minlength=n_users)
    first_after = after & (pos == n_before[codes])  # sorted by time: a user's rows before the cut come first
    evaluated = (n_before >= min_len - 1) & np.bincount(codes[after], minlength=n_users).astype(bool)
    test = first_after & evaluated[codes]
    valid = ~after & evaluated[codes] & (pos == n_before[codes] - 1)
    keep = ~after | test
    return table.filter(pa.array(keep)), {
        "train": table.filter(pa.array(keep & ~(test | valid))),
        "valid": table.filter(pa.array(valid)),
        "test": table.filter(pa.array(test)),
    }


def _user_codes(sorted_interactions: pa.Table) -> np.ndarray:
    return np.asarray(pc.dictionary_encode(sorted_interactions.column("user_id").combine_chunks()).indices)


def parse_cut(cut: str | int) -> int:
    """A cut as epoch seconds: an integer, or an ISO date/time (UTC when it names no zone)."""
    import datetime as dt

    if isinstance(cut, int) or str(cut).lstrip("-").isdigit():
        return int(cut)
    try:
        when = dt.datetime.fromisoformat(str(cut))
    except ValueError:
        raise ValueError(f"--cut {cut!r}: not a date (YYYY-MM-DD, an ISO date-time or epoch seconds)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return int(when.timestamp())

"""Several datasets as one catalogue (paper Table A4): every user and item id is prefixed by its domain,
``beauty:123``, so that ids from different sources never collide, and the original id is the text after the first
separator (``split_ids``), so results map back to each source's own ids."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reasonrec.data import schemas
from reasonrec.data.loaders import RawDataset

SEPARATOR = ":"


def prefixed(domain: str, ids) -> pa.ChunkedArray | pa.Array:
    return pc.binary_join_element_wise(domain, ids, SEPARATOR)


def split_ids(ids) -> tuple[np.ndarray, np.ndarray]:
    """(domain, original id) of each prefixed id."""
    parts = pc.split_pattern(ids, SEPARATOR, max_splits=1)
    return (pc.list_element(parts, 0).to_numpy(zero_copy_only=False),
            pc.list_element(parts, 1).to_numpy(zero_copy_only=False))


def check_names(domains: list[str]) -> None:
    for name in domains:
        if not name or SEPARATOR in name or name != name.strip():
            raise ValueError(f"domain {name!r}: a domain name must be non-empty, without spaces around it and "
                             f"without {SEPARATOR!r}")
    if len(set(domains)) != len(domains):
        raise ValueError(f"domain names must differ, got {domains} (name them: --domain NAME per --source)")


def combine(datasets: list[RawDataset], domains: list[str]) -> RawDataset:
    """One dataset whose users and items are the union of ``datasets``', each id prefixed by its domain."""
    if len(datasets) != len(domains):
        raise ValueError(f"{len(datasets)} sources but {len(domains)} domain names")
    check_names(domains)
    interactions, items = [], []
    for raw, domain in zip(datasets, domains):
        table = raw.interactions
        table = table.set_column(0, "user_id", prefixed(domain, table.column("user_id")))
        interactions.append(table.set_column(1, "item_id", prefixed(domain, table.column("item_id"))))
        items.append(raw.items.set_column(0, "item_id", prefixed(domain, raw.items.column("item_id"))))
    return RawDataset(name="+".join(domains), interactions=pa.concat_tables(interactions).cast(schemas.INTERACTIONS),
                      items=pa.concat_tables(items).cast(schemas.ITEMS))

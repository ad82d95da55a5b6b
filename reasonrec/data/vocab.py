"""String id <-> dense integer index: pandas' hash index for batches, a dict for a request's few ids."""
from __future__ import annotations

import functools
import itertools

import numpy as np
import pandas as pd
import pyarrow as pa


SMALL = 2048  # up to this many ids a lookup goes through a dict; beyond it pandas' vectorised hash index is faster


class Vocab:
    """Ids in a fixed order; ``index`` maps ids to ``offset + position`` (-1 for unknown ids).

    Items use offset 1 so that index 0 is free for padding in the models.
    """

    def __init__(self, ids, offset: int = 0):
        self.ids = np.asarray(ids, dtype=object)
        self.offset = offset
        # object dtype on both sides: pandas 3 would otherwise infer (and convert every lookup to) arrow strings,
        # which costs 4x per call.
        self._index = pd.Index(self.ids, dtype=object)
        if not self._index.is_unique:
            dup = self._index[self._index.duplicated()][0]
            raise ValueError(f"duplicate id {dup!r} in vocabulary")

    @functools.cached_property
    def _positions(self) -> dict:
        """Built on the first small lookup (serving): a batch job never pays its memory."""
        return dict(zip(self.ids.tolist(), range(self.offset, self.offset + len(self.ids))))

    def __len__(self) -> int:
        return len(self.ids)

    def index(self, values) -> np.ndarray:
        if isinstance(values, (pa.Array, pa.ChunkedArray)):
            values = values.to_numpy(zero_copy_only=False)
        if len(values) <= SMALL:
            # A served request's few ids: pandas' fixed cost per call (~60 us) is 30x the hash lookups.
            return np.fromiter(map(self._positions.get, values, itertools.repeat(-1)), dtype=np.int64,
                               count=len(values))
        pos = self._index.get_indexer(pd.Index(np.asarray(values, dtype=object), dtype=object, copy=False))
        return np.where(pos >= 0, pos + self.offset, -1).astype(np.int64)

    def lookup(self, indices: np.ndarray) -> np.ndarray:
        return self.ids[np.asarray(indices) - self.offset]

"""Arrow columns as NumPy, for the stages' vectorised work. Served requests arrive one row at a time, so each helper
skips the compute kernels when a column has no nulls: a kernel call costs ~10-20 us, most of a one-row stage."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def to_numpy(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    return array.to_numpy(zero_copy_only=False)


def strings(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A string column as numpy objects, null as ""."""
    return to_numpy(pc.fill_null(column, "") if column.null_count else column)


def as_mask(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A boolean condition as numpy; null (unknown) counts as False."""
    return to_numpy(pc.fill_null(array, False) if array.null_count else array).astype(bool)


def nulls(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Where ``array`` is null, as numpy."""
    if array.null_count in (0, len(array)):
        return np.full(len(array), array.null_count > 0)
    return to_numpy(array.is_null())


def list_parts(column: pa.ListArray | pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Each row's list length (0 for null) and the lists' values end to end."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if column.null_count == len(column):
        return np.zeros(len(column), dtype=np.int64), column.values.slice(0, 0)
    if column.null_count:
        return to_numpy(pc.fill_null(pc.list_value_length(column), 0)).astype(np.int64), pc.list_flatten(column)
    offsets = column.offsets.to_numpy()
    return np.diff(offsets).astype(np.int64), column.values.slice(offsets[0], offsets[-1] - offsets[0])


def padded(column: pa.ListArray | pa.ChunkedArray, width: int | None = None, fill=np.nan, to=None) -> np.ndarray:
    """A list column as a (rows, width) matrix; ``to`` maps the flat values (e.g. ids -> indices)."""
    if column.null_count == len(column):  # e.g. the vote columns of rows one tool answers alone
        return np.full((len(column), max(width or 0, 1)), fill, dtype=np.int64 if to else np.float64)
    lengths, flat = list_parts(column)
    values = to(flat) if to else flat.to_numpy(zero_copy_only=False)
    width = int(lengths.max(initial=0)) if width is None else width
    out = np.full((len(lengths), max(width, 1)), fill, dtype=values.dtype if to else np.float64)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    cols = np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    inside = cols < out.shape[1]
    out[rows[inside], cols[inside]] = values[inside]
    return out


def appended(table: pa.Table, fields: list[pa.Field], arrays: list) -> pa.Table:
    """``table`` with columns added at the end, in one step (each ``append_column`` rebuilds the table)."""
    return pa.Table.from_arrays([*table.columns, *arrays], schema=pa.schema([*table.schema, *fields]))

"""Loaders for the supported raw formats, each returning contract tables (interactions, items).

- ``amazon-seq``: one line per user, ``user item item ...`` in time order (S3-Rec/P5 5-core files); a folder may
  add ``item_titles.tsv`` (``item_id asin title``) and ``item2attributes.json`` (anonymous attribute ids).
  These files carry no timestamps: ``ts`` is the position in the user's sequence, which keeps the order.
- ``recbole``: RecBole atomic files ``<name>.inter`` (+ optional ``<name>.item``) with typed headers; a ``review``
  (or ``review_text``, ``text``) field of ``.inter`` is the review text.
- ``parquet``: ``interactions.parquet`` (or a folder of shards ``interactions/``) and optional ``items.parquet``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.dataset as pads

from reasonrec import storage
from reasonrec.data import schemas
from reasonrec.data.vocab import Vocab

FORMATS = ("amazon-seq", "recbole", "parquet")


@dataclass
class RawDataset:
    name: str
    interactions: pa.Table
    items: pa.Table


def load(source: str, fmt: str) -> RawDataset:
    if fmt == "amazon-seq":
        return load_amazon_seq(source)
    if fmt == "recbole":
        return load_recbole(source)
    if fmt == "parquet":
        return load_parquet(source)
    raise ValueError(f"unknown format {fmt!r}; choose one of {FORMATS}")


def _empty_items(item_ids: pa.Array) -> pa.Table:
    return schemas.conform(pa.table({"item_id": item_ids}), schemas.ITEMS, "items")


# ---------------------------------------------------------------- amazon-seq
def load_amazon_seq(source: str) -> RawDataset:
    path = Path(source)
    seq_file = path / "sequential_data.txt" if path.is_dir() else path
    if not seq_file.is_file():
        raise FileNotFoundError(f"{source}: expected a sequence file or a folder with sequential_data.txt")
    users, items, positions = _parse_sequences(seq_file)
    interactions = schemas.conform(
        pa.table({"user_id": users, "item_id": items, "ts": positions}), schemas.INTERACTIONS, str(seq_file)
    )
    folder = seq_file.parent
    item_ids = pc.unique(interactions.column("item_id"))
    items = _amazon_items(folder, item_ids)
    return RawDataset(name=folder.name if path.is_dir() else seq_file.stem, interactions=interactions, items=items)


def _parse_sequences(seq_file: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lines = seq_file.read_text().splitlines()
    if not any(line.strip() for line in lines):
        raise ValueError(f"{seq_file}: file is empty")
    tokens, line_of_token = [], []
    for lineno, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2:
            raise ValueError(f"{seq_file}:{lineno}: a line needs a user id and at least one item, got {line!r}")
        tokens.append(parts)
        line_of_token.append(lineno)
    lengths = np.fromiter((len(t) - 1 for t in tokens), dtype=np.int64, count=len(tokens))
    flat = np.array([tok for t in tokens for tok in t])
    bad = ~np.char.isdigit(flat)
    if bad.any():
        starts = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]])
        first = int(bad.nonzero()[0][0])
        row = int(np.searchsorted(starts, first, side="right") - 1)
        raise ValueError(f"{seq_file}:{line_of_token[row]}: id {str(flat[first])!r} is not a non-negative integer")
    is_user = np.zeros(len(flat), dtype=bool)
    is_user[np.concatenate([[0], np.cumsum(lengths + 1)[:-1]])] = True
    users = np.repeat(flat[is_user], lengths)
    positions = np.arange(len(users)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return users, flat[~is_user], positions


def _amazon_items(folder: Path, item_ids: pa.Array) -> pa.Table:
    item_ids = item_ids.sort()
    columns = {"item_id": item_ids}
    titles_file = folder / "item_titles.tsv"
    if titles_file.is_file():
        titles = pcsv.read_csv(
            titles_file,
            parse_options=pcsv.ParseOptions(delimiter="\t", quote_char=False),
            convert_options=pcsv.ConvertOptions(column_types={"item_id": pa.string(), "title": pa.string()},
                                                include_columns=["item_id", "title"]),
        )
        columns["title"] = _align(titles.column("item_id"), titles.column("title"), item_ids)
    attrs_file = folder / "item2attributes.json"
    if attrs_file.is_file():
        attrs = json.loads(attrs_file.read_text())
        cats = pa.array([[f"attr_{a}" for a in v] for v in attrs.values()], type=pa.list_(pa.string()))
        columns["categories"] = _align(pa.array(list(attrs), pa.string()), cats, item_ids)
    return schemas.conform(pa.table(columns), schemas.ITEMS, str(folder))


def _align(keys: pa.Array, values: pa.Array, item_ids: pa.Array) -> pa.Array:
    """Values reordered to ``item_ids`` (null where a key is missing)."""
    pos = Vocab(keys.to_numpy(zero_copy_only=False)).index(item_ids)
    return pc.take(values, pa.array(pos, mask=pos < 0))


# ---------------------------------------------------------------- recbole
_RECBOLE_TYPES = {"token": pa.string(), "token_seq": pa.string(), "float": pa.float64(), "float_seq": pa.string()}


def _read_atomic(path: Path) -> pa.Table:
    with path.open() as f:
        header = f.readline().rstrip("\n").split("\t")
    if not header or header == [""]:
        raise ValueError(f"{path}: file is empty")
    names, types = [], {}
    for col in header:
        name, _, kind = col.partition(":")
        if kind not in _RECBOLE_TYPES:
            raise ValueError(f"{path}: header field {col!r} needs a RecBole type (token, token_seq, float, float_seq)")
        names.append(name)
        types[name] = _RECBOLE_TYPES[kind]
    try:
        return pcsv.read_csv(
            path,
            read_options=pcsv.ReadOptions(column_names=names, skip_rows=1),
            parse_options=pcsv.ParseOptions(delimiter="\t", quote_char=False),
            convert_options=pcsv.ConvertOptions(column_types=types, strings_can_be_null=False),
        )
    except pa.ArrowInvalid as e:
        raise ValueError(f"{path}: {e}") from e


def load_recbole(source: str) -> RawDataset:
    path = Path(source)
    inter_files = sorted(path.glob("*.inter")) if path.is_dir() else [path]
    if len(inter_files) != 1 or not inter_files[0].is_file():
        raise FileNotFoundError(f"{source}: expected exactly one RecBole .inter file, found {inter_files}")
    inter_file = inter_files[0]
    raw = _read_atomic(inter_file)
    if raw.num_rows == 0:
        raise ValueError(f"{inter_file}: no interactions")
    for name in ("user_id", "item_id"):
        if name not in raw.column_names:
            raise ValueError(f"{inter_file}: missing required field {name!r}; found {raw.column_names}")
        empty = pc.equal(raw.column(name), "")
        if pc.any(empty).as_py():
            line = int(np.asarray(empty).nonzero()[0][0]) + 2
            raise ValueError(f"{inter_file}:{line}: field {name!r} is empty")
    ts = raw.column("timestamp") if "timestamp" in raw.column_names else pa.array(np.arange(raw.num_rows))
    table = pa.table({
        "user_id": raw.column("user_id"),
        "item_id": raw.column("item_id"),
        "ts": pc.cast(ts, pa.int64()),
        "rating": raw.column("rating") if "rating" in raw.column_names else pa.nulls(raw.num_rows, pa.float32()),
        # Review text (the explain task's targets), under RecBole's usual names for it.
        "review": next((raw.column(c) for c in ("review", "review_text", "text") if c in raw.column_names),
                       pa.nulls(raw.num_rows, pa.string())),
    })
    interactions = schemas.conform(table, schemas.INTERACTIONS, str(inter_file))
    item_file = inter_file.with_suffix(".item")
    if item_file.is_file():
        items = _recbole_items(_read_atomic(item_file), item_file)
    else:
        items = _empty_items(pc.unique(interactions.column("item_id")))
    return RawDataset(name=inter_file.stem, interactions=interactions, items=items)


def _recbole_items(raw: pa.Table, source: Path) -> pa.Table:
    title = next((c for c in ("title", "movie_title", "name") if c in raw.column_names), None)
    cats = next((c for c in ("categories", "class", "genre") if c in raw.column_names), None)
    columns = {"item_id": raw.column("item_id")}
    if title:
        columns["title"] = raw.column(title)
    if cats:
        columns["categories"] = pc.split_pattern(raw.column(cats), " ")
    for name in ("brand", "price"):
        if name in raw.column_names:
            columns[name] = raw.column(name)
    return schemas.conform(pa.table(columns), schemas.ITEMS, str(source))


# ---------------------------------------------------------------- parquet
def _read_parquet_any(uri: str) -> pa.Table:
    fs, path = storage.resolve(uri)
    try:
        return pads.dataset(path, filesystem=fs, format="parquet").to_table()
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"{uri}: not readable as parquet: {e}") from e


def load_parquet(source: str) -> RawDataset:
    base = source.rstrip("/")
    inter_uri = next((u for u in (storage.join(base, "interactions.parquet"), storage.join(base, "interactions"))
                      if storage.exists(u)), None)
    if inter_uri is None:
        raise FileNotFoundError(f"{source}: expected interactions.parquet or a folder interactions/ of shards")
    interactions = schemas.conform(_read_parquet_any(inter_uri), schemas.INTERACTIONS, inter_uri)
    if interactions.num_rows == 0:
        raise ValueError(f"{inter_uri}: no interactions")
    items_uri = storage.join(base, "items.parquet")
    if storage.exists(items_uri):
        items = schemas.conform(_read_parquet_any(items_uri), schemas.ITEMS, items_uri)
    else:
        items = _empty_items(pc.unique(interactions.column("item_id")))
    return RawDataset(name=Path(base).name, interactions=interactions, items=items)

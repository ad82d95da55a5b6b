"""Collaborative item tokens (as in LLaRA, CoLLM, E4SRec): every catalogue item gets its own vocabulary entry whose
input and output embeddings start from a classical tool's item embedding.

A model trained from scratch on 2 CPU cores cannot learn in minutes what the tools know (which items go together);
with its items as tokens whose embeddings already carry that, it starts from the tools' item-item similarity
(one history item's embedding dotted with a candidate's ranks the demo's positive first among 20 about half the
time) and the training adjusts it beside the titles and images. The tokens are plain added tokens of the tokenizer
and rows of the embedding matrices, so the exported Hugging Face folder loads unchanged in transformers and vLLM.
Items the tool never saw in training (new to the catalogue) start from the mean of their category's rows: their
prompt still carries the title and image, which is where the model learns to read them.
"""
from __future__ import annotations

import numpy as np

from reasonrec.prompts.catalogue import item_token


def project(vectors: np.ndarray, width: int, scale: float, seed: int = 0) -> np.ndarray:
    """(n, d) tool vectors -> (n, width) rows through a fixed random Gaussian projection, which keeps the vectors'
    dot products up to a common factor (Johnson-Lindenstrauss); rescaled so that the mean row norm is ``scale``."""
    rng = np.random.default_rng(seed)
    rows = vectors @ rng.normal(size=(vectors.shape[1], width))
    return rows * (scale / max(float(np.linalg.norm(rows, axis=1).mean()), 1e-12))


def initial_rows(vectors: np.ndarray, warm: np.ndarray, groups: np.ndarray, width: int, scale: float,
                 seed: int = 0) -> np.ndarray:
    """Rows for every item: projected tool vectors where the tool trained on the item (``warm``), else the mean of
    the warm rows of the same group (e.g. first category), else of all warm rows."""
    rows = project(vectors, width, scale, seed)
    if not warm.any():
        return np.zeros_like(rows)
    fallback = rows[warm].mean(axis=0)
    _, group = np.unique(groups.astype(str), return_inverse=True)
    sums = np.zeros((group.max() + 1, width))
    np.add.at(sums, group[warm], rows[warm])
    counts = np.bincount(group[warm], minlength=len(sums))[:, None]
    means = np.where(counts > 0, sums / np.maximum(counts, 1), fallback)
    return np.where(warm[:, None], rows, means[group])


def add_item_tokens(model, tokenizer, item_ids: list[str], rows: np.ndarray) -> list[int]:
    """Add one token per item (one token after a space, so it can be a label) and set its input and output
    embedding rows; returns the new token ids."""
    import torch
    from tokenizers import AddedToken

    tokens = [item_token(i) for i in item_ids]
    tokenizer.add_tokens([AddedToken(t, lstrip=True, normalized=False, special=False) for t in tokens])
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    values = torch.as_tensor(rows, dtype=model.get_input_embeddings().weight.dtype)
    with torch.no_grad():
        model.get_input_embeddings().weight[ids] = values
        model.get_output_embeddings().weight[ids] = values
    return ids


def add_catalogue_tokens(model, tokenizer, data, tool, scale: float, seed: int = 0) -> int:
    """A token for every item of the prepared catalogue, rows from ``tool``'s item embeddings; returns the count.
    Warm items are those with training interactions; the group of a cold item is its first category."""
    if not hasattr(tool, "item_emb"):
        raise ValueError(f"item tokens: tool {type(tool).__name__} has no item embeddings (item_emb)")
    n = data.n_items
    vectors = tool.item_emb.weight.detach().float().numpy()[1:n + 1]
    warm = np.bincount(data.train.items, minlength=n + 1)[1:] > 0
    items = data.table("items")
    first = [(c or [None])[0] for c in items.column("categories").to_pylist()]
    groups = np.full(n, None, dtype=object)
    index = data.item_vocab.index(items.column("item_id"))
    groups[index[index > 0] - 1] = np.asarray(first, dtype=object)[index > 0]
    width = model.get_input_embeddings().weight.shape[1]
    rows = initial_rows(vectors, warm, groups, width, scale, seed)
    add_item_tokens(model, tokenizer, data.item_vocab.lookup(np.arange(1, n + 1)).tolist(), rows)
    return n

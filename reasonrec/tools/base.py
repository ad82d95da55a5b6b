"""The tool interface: every classical recommender is a ``Tool`` (fit, score, save, load) in its own file.

A tool is an ``nn.Module`` whose ``forward(batch)`` returns the training loss (so DDP can wrap it) and whose
``score(history)`` returns full-catalogue scores, shape (users, n_items + 1); column 0 is padding. A ranking tool's
scores are ``user_vectors(history) @ item_table().T``, so the tool stage encodes a block's users once and scores the
catalogue in passes; a CTR tool scores given candidates instead (``reasonrec.tools.ctr``).
Training itself lives in ``reasonrec.train.loop`` and is the same for every tool.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import ClassVar, Iterator

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from reasonrec.data.prepared import Sequences
from reasonrec.data.vocab import Vocab

REGISTRY: dict[str, type["Tool"]] = {}


@dataclasses.dataclass
class ToolConfig:
    dim: int = 64
    epochs: int = 100
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 5  # evaluations without a better validation NDCG@10 before stopping
    eval_every: int = 1
    val_task: str = "sequential"  # the task whose validation NDCG@10 picks the best epoch
    # Retrain from scratch on train + validation for the chosen number of epochs: models that keep a
    # per-user embedding otherwise never see each user's latest known interaction.
    refit: bool = False
    seed: int = 0


def register(cls: type["Tool"]) -> type["Tool"]:
    REGISTRY[cls.name] = cls
    return cls


def tool_class(name: str) -> type["Tool"]:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown tool {name!r}; available: {sorted(REGISTRY)}") from None


def make_config(name: str, overrides: dict | None = None) -> ToolConfig:
    cls = tool_class(name).Config
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(overrides or {}) - known
    if unknown:
        raise ValueError(f"{name}: unknown config field(s) {sorted(unknown)}; known: {sorted(known)}")
    return cls(**(overrides or {}))


class Tool(nn.Module):
    name: ClassVar[str]
    Config: ClassVar[type[ToolConfig]] = ToolConfig
    trainable: ClassVar[bool] = True
    tasks: ClassVar[tuple[str, ...]] = ("sequential", "direct")  # the requests it answers (ranks the catalogue)
    selection: ClassVar[str] = "NDCG@10"  # the validation figure that picks the best epoch (higher is better)

    def __init__(self, config: ToolConfig, n_items: int, user_ids: np.ndarray | None = None):
        super().__init__()
        self.config = config
        self.n_items = n_items
        self.users = Vocab(user_ids if user_ids is not None else [])

    # -- training hooks (used by reasonrec.train.loop.fit)
    def attach(self, train: Sequences) -> None:
        """Called once before training with the training sequences (graphs, counts, ...)."""

    def training_batches(self, train: Sequences, rng: np.random.Generator) -> Iterator[dict]:
        raise NotImplementedError

    def finalize(self) -> None:
        """Called after training: cache whatever scoring needs (e.g. propagated embeddings)."""

    # -- inference
    def user_vectors(self, history: Sequences) -> torch.Tensor:
        """(users, dim): one vector per user whose products with ``item_table()`` are its scores. Apart from the
        product so that a caller can encode many users at once and score the catalogue in smaller passes."""
        raise NotImplementedError

    def item_table(self) -> torch.Tensor:
        """(n_items + 1, dim): row 0 is padding."""
        raise NotImplementedError

    def score(self, history: Sequences) -> torch.Tensor:
        return self.user_vectors(history) @ self.item_table().T

    # -- persistence
    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, folder / "model.safetensors")
        meta = {"tool": self.name, "n_items": self.n_items, "config": dataclasses.asdict(self.config)}
        (folder / "config.json").write_text(json.dumps(meta, indent=2))
        if len(self.users):
            (folder / "users.json").write_text(json.dumps(self.users.ids.tolist()))

    @staticmethod
    def load(folder: str | Path) -> "Tool":
        folder = Path(folder)
        meta = json.loads((folder / "config.json").read_text())
        cls = tool_class(meta["tool"])
        users_file = folder / "users.json"
        user_ids = np.array(json.loads(users_file.read_text()), dtype=object) if users_file.exists() else None
        tool = cls(cls.Config(**meta["config"]), meta["n_items"], user_ids)
        tool.load_state_dict(load_file(folder / "model.safetensors"))
        tool.eval()
        return tool

    def user_rows(self, history: Sequences) -> tuple[torch.Tensor, torch.Tensor]:
        """Row of each user in the user table, and whether the user was seen in training."""
        idx = torch.from_numpy(self.users.index(history.user_ids))
        return idx.clamp(min=0), idx >= 0


def exclude_seen(scores: torch.Tensor, history: Sequences) -> torch.Tensor:
    """Padding and every item already in the user's history can not be recommended (in place)."""
    rows = np.repeat(np.arange(len(history)), history.lengths)
    scores[torch.from_numpy(rows), torch.from_numpy(history.items)] = float("-inf")
    scores[:, 0] = float("-inf")
    return scores

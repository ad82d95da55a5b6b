"""GRU4Rec (Hidasi et al., 2016) with the full-softmax next-item loss of later work (Hidasi & Czapp, 2023)."""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from reasonrec.tools.base import register
from reasonrec.tools.sequential import SequentialConfig, SequentialTool


@dataclasses.dataclass
class GRU4RecConfig(SequentialConfig):
    layers: int = 1
    dropout: float = 0.3


@register
class GRU4Rec(SequentialTool):
    name = "gru4rec"
    Config = GRU4RecConfig

    def __init__(self, config: GRU4RecConfig, n_items: int, user_ids=None):
        super().__init__(config, n_items, user_ids)
        self.item_emb = nn.Embedding(n_items + 1, config.dim, padding_idx=0)
        self.gru = nn.GRU(config.dim, config.dim, num_layers=config.layers, batch_first=True)
        self.out = nn.Linear(config.dim, config.dim)
        self.drop = nn.Dropout(config.dropout)
        nn.init.normal_(self.item_emb.weight, std=0.02)

    def run_packed(self, seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The GRU over each user's items alone: (packed outputs, final state (layers, B, dim), left-padding width).

        The GRU must not read the left padding: its state would depend on the longest history in the batch, so a
        user's scores would depend on who else is in the batch. An empty history reads one padding step."""
        width = seq.shape[1]
        lengths = (seq > 0).sum(dim=1).clamp(min=1)
        shift = (width - lengths)[:, None]
        right = seq.gather(1, (torch.arange(width)[None, :] + shift) % width)  # items first
        packed = nn.utils.rnn.pack_padded_sequence(self.drop(self.item_emb(right)), lengths, batch_first=True,
                                                   enforce_sorted=False)
        outputs, state = self.gru(packed)
        return outputs, state, shift

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        width = seq.shape[1]
        outputs, _, shift = self.run_packed(seq)
        # Back to the left-padded layout the training loss reads.
        hidden, _ = nn.utils.rnn.pad_packed_sequence(outputs, batch_first=True, total_length=width)
        hidden = hidden.gather(1, ((torch.arange(width)[None, :] - shift) % width)[:, :, None].expand_as(hidden))
        return self.out(self.drop(hidden))

    def encode_last(self, seq: torch.Tensor) -> torch.Tensor:
        # The last item's output is the top layer's final state: nothing to unpack.
        return self.out(self.drop(self.run_packed(seq)[1][-1]))

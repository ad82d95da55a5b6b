"""BPR-MF (Rendle et al., 2009): matrix factorisation trained with the pairwise BPR loss."""
from __future__ import annotations

from torch import nn

from reasonrec.tools.base import register
from reasonrec.tools.pairwise import PairwiseConfig, PairwiseTool


@register
class BPRMF(PairwiseTool):
    name = "bprmf"
    Config = PairwiseConfig

    def __init__(self, config: PairwiseConfig, n_items: int, user_ids=None):
        super().__init__(config, n_items, user_ids)
        self.user_emb = nn.Embedding(max(len(self.users), 1), config.dim)
        self.item_emb = nn.Embedding(n_items + 1, config.dim, padding_idx=0)
        nn.init.normal_(self.user_emb.weight, std=0.1)
        nn.init.normal_(self.item_emb.weight, std=0.1)

    def embeddings(self):
        return self.user_emb.weight, self.item_emb.weight


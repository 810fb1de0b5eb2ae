"""A DCN-v2 tower over (user, items) embeddings in the module form age's TorchScript adapter
takes (include/age/torch/torch_model.hpp): forward(user [1 or N, user_dim], items [N,
item_dim]) -> logits [N], int attributes user_dim and item_dim, and nn.Dropout submodules
with their rate in the float attribute dropout_rate (the adapter's seeded dropout mode).
Shared by examples/torch/train_dcn.py and the adapter's test (tests/torch/).
"""

from typing import List

import torch
from torch import nn


class DcnV2(nn.Module):
    """DCN-v2 (Wang et al. 2021) with full-rank cross layers, x_{l+1} = x0 * (W_l x_l + b_l)
    + x_l, beside a ReLU MLP with dropout, both on x0 = [user | item]; one logit from the
    two. Every candidate is computed on its own row (no batch statistics), as the adapter
    requires."""

    def __init__(self, user_dim: int, item_dim: int, cross_layers: int = 2, hidden: List[int] = (64, 32),
                 dropout: float = 0.1):
        super().__init__()
        self.user_dim = user_dim
        self.item_dim = item_dim
        self.dropout_rate = float(dropout)
        d = user_dim + item_dim
        self.cross = nn.ModuleList([nn.Linear(d, d) for _ in range(cross_layers)])
        deep = []
        width = d
        for h in hidden:
            deep += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        self.deep = nn.Sequential(*deep)
        self.head = nn.Linear(d + width, 1)

    def forward(self, user: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        # A user row shared by the request is broadcast to every candidate.
        x0 = torch.cat([user.expand(items.size(0), -1), items], dim=1)
        x = x0
        for layer in self.cross:
            x = x0 * layer(x) + x
        return self.head(torch.cat([x, self.deep(x0)], dim=1)).squeeze(1)

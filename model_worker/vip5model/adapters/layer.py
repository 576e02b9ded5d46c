"""One bottleneck adapter: (..., D) -> (..., D), x + up(act(down(x))), bottleneck width R = D // r.

The up projection starts at zero, so a freshly attached adapter is the identity and adding adapters
to a trained backbone does not change its outputs until they train.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN


class BottleneckAdapter(nn.Module):
    def __init__(self, d_model: int, bottleneck_dim: int, activation: str = "gelu_new"):
        super().__init__()
        self.down = nn.Linear(d_model, bottleneck_dim)
        self.act = ACT2FN[activation]
        self.up = nn.Linear(bottleneck_dim, d_model)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.act(self.down(x)))  # (..., D)

"""MLP backbone for vector data ``[N, D]`` (the 2-D setting)."""
from __future__ import annotations

import torch
from torch import nn

from ..diffusion import fourier_features


class MLPBackbone(nn.Module):
    """F(x_in, c_noise, labels): residual SiLU MLP with a sinusoidal noise embedding and optional class embedding."""

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3, emb_dim: int = 32, label_dim: int = 0):
        super().__init__()
        self.emb_dim = emb_dim
        self.inp = nn.Linear(dim, hidden)
        self.emb = nn.Sequential(nn.Linear(emb_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.label_emb = nn.Embedding(label_dim, hidden) if label_dim > 0 else None
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            for _ in range(depth)
        )
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.emb(fourier_features(c_noise, self.emb_dim))  # [N, hidden]
        if self.label_emb is not None:
            if labels is None:
                raise ValueError("labels=None: this network is class-conditional and needs integer labels [N]")
            emb = emb + self.label_emb(labels)
        h = self.inp(x) + emb
        for block in self.blocks:
            h = h + block(h + emb)
        return self.out(h)

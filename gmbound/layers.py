"""Layers that gmbound provides for models it bounds."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """Per-channel input normalisation ``(x - mean) / std`` as a layer.

    Putting normalisation inside the model keeps the perturbation box in pixel space
    (where ``x_min``/``x_max`` and ``eps`` are defined) while the network sees
    normalised inputs; the bound engine treats it as a per-channel affine map.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.get_default_dtype()).flatten()
        std_t = torch.as_tensor(std, dtype=torch.get_default_dtype()).flatten()
        if mean_t.numel() != std_t.numel():
            raise ValueError(f"Normalize: mean has {mean_t.numel()} entries but std has {std_t.numel()}")
        if not bool((std_t > 0).all()):
            raise ValueError(f"Normalize: std must be positive, got {std_t.tolist()}")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def channel_shape(self, x_dim: int) -> tuple[int, ...]:
        """Shape that broadcasts the per-channel vectors over an input of ``x_dim`` dims (batch first)."""
        return (-1,) + (1,) * (x_dim - 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = self.channel_shape(x.dim())
        return (x - self.mean.view(shape)) / self.std.view(shape)

    def extra_repr(self) -> str:
        return f"mean={self.mean.tolist()}, std={self.std.tolist()}"

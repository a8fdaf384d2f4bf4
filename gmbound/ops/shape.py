"""Ops that only move entries around: Flatten, reshape / view, zero padding."""
from __future__ import annotations

import torch

from .base import BoundOp, Interval, Shape


def _numel(shape: Shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


class FlattenOp(BoundOp):
    """``a.flatten(1)``: the per-sample tensor as a vector. A pending ReLU passes through (it commutes)."""

    kind = "diagonal"

    def forward(self, a: torch.Tensor, update_running_stats: bool = True) -> torch.Tensor:
        return a.flatten(1)

    def out_shape(self, in_shape: Shape) -> Shape:
        return (_numel(in_shape),)

    def interval(self, prims, a: Interval) -> Interval:
        return Interval(a.lower.flatten(2), a.upper.flatten(2), a.relu_pending)

    def backward(self, prims, lam, in_shapes, out_shape, pre):
        return [lam.reshape(lam.shape[:3] + tuple(in_shapes[0]))], None


class ReshapeOp(BoundOp):
    """``a.reshape(B, *target)`` (``view`` too); ``target`` may hold one ``-1``."""

    kind = "diagonal"

    def __init__(self, module, where: str, target: tuple[int, ...]):
        super().__init__(module, where)
        self.target = tuple(int(t) for t in target)

    def forward(self, a: torch.Tensor, update_running_stats: bool = True) -> torch.Tensor:
        return a.reshape((a.shape[0],) + self.target)

    def out_shape(self, in_shape: Shape) -> Shape:
        n = _numel(in_shape)
        known = _numel(tuple(t for t in self.target if t != -1))
        free = sum(t == -1 for t in self.target)
        if free > 1 or any(t < -1 for t in self.target) or (free and (known == 0 or n % known)) or \
                (not free and known != n):
            raise ValueError(f"{self.where} cannot reshape a per-sample shape {in_shape} into {self.target}")
        return tuple(n // known if t == -1 else t for t in self.target)

    def interval(self, prims, a: Interval) -> Interval:
        lead = a.lower.shape[:2]
        return Interval(a.lower.reshape(lead + self.target), a.upper.reshape(lead + self.target), a.relu_pending)

    def backward(self, prims, lam, in_shapes, out_shape, pre):
        return [lam.reshape(lam.shape[:3] + tuple(in_shapes[0]))], None


class PadOp(BoundOp):
    """Zero padding of the last dimensions (``F.pad(x, pad)``, constant 0), e.g. a shortcut's extra channels.

    Padding commutes with ReLU (``relu(0) = 0``), so a pending ReLU passes through; CROWN crops Lambda.
    """

    kind = "diagonal"

    def __init__(self, module, where: str, pad: tuple[int, ...]):
        super().__init__(module, where)
        self.pad = tuple(int(p) for p in pad)

    def forward(self, a: torch.Tensor, update_running_stats: bool = True) -> torch.Tensor:
        return torch.nn.functional.pad(a, self.pad)

    def out_shape(self, in_shape: Shape) -> Shape:
        n = len(self.pad) // 2
        if n > len(in_shape):
            raise ValueError(f"{self.where} pads {n} dimensions of a per-sample shape {in_shape}")
        out = list(in_shape)
        for d in range(n):  # pad lists the last dimension first
            out[-1 - d] += self.pad[2 * d] + self.pad[2 * d + 1]
        return tuple(out)

    def interval(self, prims, a: Interval) -> Interval:
        pad = torch.nn.functional.pad
        return Interval(pad(a.lower, self.pad), pad(a.upper, self.pad), a.relu_pending)

    def backward(self, prims, lam, in_shapes, out_shape, pre):
        index = [slice(None)] * lam.dim()
        for d in range(len(self.pad) // 2):
            size = out_shape[-1 - d]
            index[lam.dim() - 1 - d] = slice(self.pad[2 * d], size - self.pad[2 * d + 1])
        return [lam[tuple(index)]], None

"""Ops that only move entries around: Flatten, reshape / view, padding (constant, reflect, replicate, circular)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .base import BoundOp, Interval, Shape, materialise

PAD_MODES = ("constant", "reflect", "replicate", "circular")


def pad_adjoint(lam: torch.Tensor, in_shape: Shape, pad: Sequence[int], mode: str) -> torch.Tensor:
    """``P^T lam`` for the copying pad ``P = F.pad(., pad, mode)`` of a per-sample ``in_shape``; ``lam [..., *out]``.

    Each padded entry copies an input entry, so ``P^T`` sums Lambda onto the entries copied; autograd
    through ``F.pad`` gives exactly that (and stays differentiable in Lambda for training).
    """
    n = len(in_shape)
    flat = lam.reshape((-1,) + tuple(lam.shape[-n:]))
    with torch.enable_grad():
        x = torch.zeros((flat.shape[0],) + tuple(in_shape), dtype=lam.dtype, device=lam.device, requires_grad=True)
        (adj,) = torch.autograd.grad(F.pad(x, tuple(pad), mode), x, flat, create_graph=flat.requires_grad)
    return adj.reshape(tuple(lam.shape[:-n]) + tuple(in_shape))


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
    """``F.pad(x, pad, mode, value)`` of the last dimensions, e.g. a shortcut's extra channels or a reflected border.

    Zero padding commutes with ReLU (``relu(0) = 0``) and so do the copying modes (reflect,
    replicate, circular: each new entry copies an input entry), so a pending ReLU passes through;
    their intervals are the padded bounds (exact). CROWN: zero padding crops Lambda; a constant
    ``value`` also adds ``value`` times the Lambda of the border; a copying mode sums the border's
    Lambda onto the entries it copies (``pad_adjoint``).
    """

    kind = "diagonal"

    def __init__(self, module, where: str, pad: tuple[int, ...], mode: str = "constant", value: float = 0.0):
        super().__init__(module, where)
        if mode not in PAD_MODES:
            raise ValueError(f"{where}: padding mode {mode!r} is not one of {PAD_MODES}")
        self.pad = tuple(int(p) for p in pad)
        self.mode, self.value = mode, float(value)

    def _pad(self, a: torch.Tensor) -> torch.Tensor:
        if self.mode == "constant":
            return F.pad(a, self.pad, value=self.value)
        return F.pad(a, self.pad, self.mode)

    def forward(self, a: torch.Tensor, update_running_stats: bool = True) -> torch.Tensor:
        return self._pad(a)

    def out_shape(self, in_shape: Shape) -> Shape:
        n = len(self.pad) // 2
        if n > len(in_shape):
            raise ValueError(f"{self.where} pads {n} dimensions of a per-sample shape {in_shape}")
        try:
            out = self._pad(torch.zeros((1,) + tuple(in_shape), device="meta"))
        except (RuntimeError, NotImplementedError, ValueError) as err:
            raise ValueError(f"{self.where} cannot pad a per-sample shape {in_shape} in mode {self.mode!r}: "
                             f"{err}") from None
        return tuple(out.shape[1:])

    def interval(self, prims, a: Interval) -> Interval:
        if self.mode == "constant" and self.value != 0:
            lower, upper = materialise(a, prims)  # relu(value) != value for value < 0
            pending = False
        else:
            lower, upper, pending = a.lower, a.upper, a.relu_pending
        lead, in_shape = lower.shape[:2], tuple(lower.shape[2:])
        return Interval(*(self._pad(t.reshape((-1,) + in_shape)).unflatten(0, lead) for t in (lower, upper)), pending)

    def backward(self, prims, lam, in_shapes, out_shape, pre):
        if self.mode != "constant":
            return [pad_adjoint(lam, in_shapes[0], self.pad, self.mode)], None
        index = [slice(None)] * lam.dim()
        for d in range(len(self.pad) // 2):
            size = out_shape[-1 - d]
            index[lam.dim() - 1 - d] = slice(self.pad[2 * d], size - self.pad[2 * d + 1])
        lam_in = lam[tuple(index)]
        if self.value == 0:
            return [lam_in], None
        # lam . pad(a) = lam_in . a + value * (the sum of Lambda over the border)
        border = lam.flatten(3).sum(-1) - lam_in.flatten(3).sum(-1)
        return [lam_in], self.value * border

"""Structure ops of a traced graph: concatenation, slicing / narrowing and sums / means over dimensions.

All three are linear with weights 0, 1 (or ``1/n``), so their interval steps are exact and their
CROWN steps are the adjoint maps: concatenation splits Lambda, slicing scatters it into zeros,
a sum or mean broadcasts it over the reduced dimensions. Dimensions are given as in the model
(batch first) and must leave the batch axis alone.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch

from .base import BoundOp, Interval, Shape, materialise


def per_sample_dim(dim: int, n_dims: int, where: str) -> int:
    """The per-sample index of ``dim`` (batch first, negatives allowed) for a per-sample rank ``n_dims``."""
    full = n_dims + 1
    if not -full <= dim < full:
        raise ValueError(f"{where}: dimension {dim} out of range for a tensor of {full} dimensions")
    d = dim % full
    if d == 0:
        raise ValueError(f"{where}: the operation acts on the batch dimension (dim {dim}); gmbound bounds "
                         "each sample on its own, so the batch axis must stay")
    return d - 1


def _broadcast_lead(ts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Bounds ``[N or 1, B, ...]`` expanded to one leading size, so they can be concatenated."""
    n = max(t.shape[0] for t in ts)
    return [t.expand((n,) + tuple(t.shape[1:])) if t.shape[0] != n else t for t in ts]


class CatOp(BoundOp):
    """``torch.cat([a, b, ...], dim)`` of traced tensors along a per-sample dimension."""

    kind = "merge"

    def __init__(self, module, where: str, dim: int, n_inputs: int):
        super().__init__(module, where)
        self.dim, self.count = int(dim), n_inputs

    def shape_signature(self) -> tuple:
        return ("cat", self.dim, self.count)

    def forward(self, *inputs: torch.Tensor, update_running_stats: bool = True) -> torch.Tensor:
        return torch.cat(inputs, self.dim)

    def out_shape(self, *in_shapes: Shape) -> Shape:
        first = in_shapes[0]
        d = per_sample_dim(self.dim, len(first), self.where)
        for s in in_shapes[1:]:
            if len(s) != len(first) or any(a != b for i, (a, b) in enumerate(zip(s, first)) if i != d):
                raise ValueError(f"{self.where} concatenates per-sample shapes {tuple(in_shapes)} along dim "
                                 f"{self.dim}: they must agree elsewhere")
        out = list(first)
        out[d] = sum(s[d] for s in in_shapes)
        return tuple(out)

    def interval(self, prims, *inputs: Interval) -> Interval:
        pairs = [materialise(v, prims) for v in inputs]
        d = per_sample_dim(self.dim, pairs[0][0].dim() - 2, self.where) + 2
        return Interval(torch.cat(_broadcast_lead([p[0] for p in pairs]), d),
                        torch.cat(_broadcast_lead([p[1] for p in pairs]), d))

    def backward(self, prims, lam, in_shapes, out_shape, pre):
        d = per_sample_dim(self.dim, len(out_shape), self.where)
        return list(torch.split(lam, [s[d] for s in in_shapes], dim=d + 3)), None


Index = tuple[Union[slice, int], ...]


class SliceOp(BoundOp):
    """Basic indexing of the per-sample dimensions: ``x[:, a:b]``, ``x[..., ::2]``, ``x[:, 3]``, ``x.narrow(d, s, n)``.

    ``index``: one entry per per-sample dimension from the first (slices with positive steps, or
    integers, which drop their dimension); missing trailing entries keep their dimensions.
    A selection: the interval step selects the bounds (exact, and a pending ReLU passes through),
    the CROWN step writes Lambda into zeros of the input's shape.
    """

    kind = "diagonal"

    def __init__(self, module, where: str, index: Index):
        super().__init__(module, where)
        self.index = tuple(index)

    def shape_signature(self) -> tuple:
        return ("index", tuple((i.start, i.stop, i.step) if isinstance(i, slice) else i for i in self.index))

    def _full(self, lead: int) -> tuple:
        return (slice(None),) * lead + self.index

    def forward(self, a: torch.Tensor, update_running_stats: bool = True) -> torch.Tensor:
        return a[self._full(1)]

    def out_shape(self, in_shape: Shape) -> Shape:
        if len(self.index) > len(in_shape):
            raise ValueError(f"{self.where} indexes {len(self.index)} per-sample dimensions of shape {in_shape}")
        for i, s in zip(self.index, in_shape):
            if isinstance(i, int) and not -s <= i < s:
                raise ValueError(f"{self.where}: index {i} out of range for a dimension of size {s}")
        out = torch.zeros((1,) + tuple(in_shape), device="meta")[self._full(1)]
        if any(n == 0 for n in out.shape[1:]):
            raise ValueError(f"{self.where}: the slice {self.index} of shape {in_shape} is empty")
        return tuple(out.shape[1:])

    def interval(self, prims, a: Interval) -> Interval:
        idx = self._full(2)
        return Interval(a.lower[idx], a.upper[idx], a.relu_pending)

    def backward(self, prims, lam, in_shapes, out_shape, pre):
        lam_in = lam.new_zeros(lam.shape[:3] + tuple(in_shapes[0]))
        lam_in[self._full(3)] = lam
        return [lam_in], None


class ReduceOp(BoundOp):
    """``x.sum(dims)`` / ``x.mean(dims)`` over per-sample dimensions (``keepdim`` either way).

    Non-negative weights: ``[sum(l), sum(u)]`` is exact. CROWN: Lambda broadcast over the reduced
    dimensions (times ``1/n`` for a mean).
    """

    def __init__(self, module, where: str, dims: Sequence[int], keepdim: bool, mean: bool):
        super().__init__(module, where)
        self.dims, self.keepdim, self.mean = tuple(int(d) for d in dims), bool(keepdim), bool(mean)

    def shape_signature(self) -> tuple:
        return ("reduce", self.dims, self.keepdim, self.mean)

    def _dims(self, n_dims: int) -> tuple[int, ...]:
        dims = tuple(sorted({per_sample_dim(d, n_dims, self.where) for d in self.dims}))
        if len(dims) != len(self.dims):
            raise ValueError(f"{self.where}: dimension listed twice in {self.dims}")
        return dims

    def _apply(self, t: torch.Tensor, lead: int) -> torch.Tensor:
        dims = tuple(d + lead for d in self._dims(t.dim() - lead))
        return t.mean(dims, keepdim=self.keepdim) if self.mean else t.sum(dims, keepdim=self.keepdim)

    def forward(self, a: torch.Tensor, update_running_stats: bool = True) -> torch.Tensor:
        return self._apply(a, 1)

    def out_shape(self, in_shape: Shape) -> Shape:
        dims = self._dims(len(in_shape))
        return tuple(1 if i in dims else s for i, s in enumerate(in_shape)
                     if self.keepdim or i not in dims)

    def interval(self, prims, a: Interval) -> Interval:
        lower, upper = materialise(a, prims)
        return Interval(self._apply(lower, 2), self._apply(upper, 2))

    def backward(self, prims, lam, in_shapes, out_shape, pre):
        in_shape = tuple(in_shapes[0])
        dims = self._dims(len(in_shape))
        if not self.keepdim:
            for d in dims:
                lam = lam.unsqueeze(3 + d)
        if self.mean:
            n = 1
            for d in dims:
                n *= in_shape[d]
            lam = lam / n
        return [lam.expand(lam.shape[:3] + in_shape).contiguous()], None

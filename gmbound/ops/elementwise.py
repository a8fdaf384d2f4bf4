"""Element-wise ops of a traced graph: the sum of two tensors (residual) and affine maps by constants."""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch

from .base import BoundOp, Interval, Shape, materialise

Constant = Union[float, Callable[[], torch.Tensor]]  # a number, or a getter of a buffer / parameter


class AddOp(BoundOp):
    """``a + b`` (``sign = -1``: ``a - b``) of two tensors of one shape.

    Bounds add (``[la + lb, ua + ub]``, or ``[la - ub, ua - lb]``); Lambda goes to both inputs
    (negated for ``b`` when subtracting), and the drivers sum it where a node feeds several ops.
    """

    kind = "merge"
    n_inputs = 2

    def __init__(self, module, where: str, sign: float = 1.0):
        super().__init__(module, where)
        self.sign = sign

    def forward(self, a: torch.Tensor, b: torch.Tensor, update_running_stats: bool = True) -> torch.Tensor:
        return a + b if self.sign > 0 else a - b

    def out_shape(self, a: Shape, b: Shape) -> Shape:
        if tuple(a) != tuple(b):
            raise ValueError(f"{self.where} adds tensors of different per-sample shapes {a} and {b}; gmbound bounds "
                             "sums of equal shapes (no broadcasting between two variable tensors)")
        return a

    def interval(self, prims, a: Interval, b: Interval) -> Interval:
        (la, ua), (lb, ub) = materialise(a, prims), materialise(b, prims)
        if self.sign > 0:
            return Interval(la + lb, ua + ub)
        return Interval(la - ub, ua - lb)

    def backward(self, prims, lam, in_shapes, out_shape, pre):
        return [lam, lam if self.sign > 0 else -lam], None


def _value(c: Constant, like: torch.Tensor) -> torch.Tensor:
    t = c() if callable(c) else c
    return torch.as_tensor(t, dtype=like.dtype, device=like.device)


class ConstantAffineOp(BoundOp):
    """``z = a * scale + shift`` with constants (numbers, buffers or parameters, read at each call).

    Covers ``a + c``, ``c + a``, ``a - c``, ``c - a``, ``a * c``, ``a / c`` and ``-a`` of a traced
    graph. A constant must broadcast to the per-sample shape (it may not vary along the batch).
    """

    kind = "diagonal"

    def __init__(self, module, where: str, scale: Optional[Constant] = None, shift: Optional[Constant] = None,
                 divide: bool = False):
        super().__init__(module, where)
        self._scale, self._shift, self._divide = scale, shift, divide

    def scale_shift(self, like: torch.Tensor) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """The constants as tensors of ``like``'s dtype and device (``scale`` is the divisor when dividing)."""
        scale = None if self._scale is None else _value(self._scale, like)
        shift = None if self._shift is None else _value(self._shift, like)
        return scale, shift

    def _scaled(self, t: torch.Tensor, scale: Optional[torch.Tensor]) -> torch.Tensor:
        if scale is None:
            return t
        return t / scale if self._divide else t * scale

    def forward(self, a: torch.Tensor, update_running_stats: bool = True) -> torch.Tensor:
        scale, shift = self.scale_shift(a)
        out = self._scaled(a, scale)
        return out if shift is None else out + shift

    def out_shape(self, in_shape: Shape) -> Shape:
        like = torch.zeros((1,) + tuple(in_shape), device="meta")
        for c in (self._scale, self._shift):
            if c is None or not callable(c):
                continue
            t = c()
            try:
                out = torch.broadcast_shapes(tuple(t.shape), like.shape)
            except RuntimeError:
                out = None
            if out != like.shape:
                raise ValueError(f"{self.where}: a constant of shape {tuple(t.shape)} does not broadcast to the "
                                 f"per-sample shape {in_shape} (batch first)")
        return in_shape

    def interval(self, prims, a: Interval) -> Interval:
        lower, upper = materialise(a, prims)
        scale, shift = self.scale_shift(lower)  # constants broadcast against [B, *S], so against [N, B, *S]
        if scale is not None:
            centre, radius = (upper + lower) / 2, (upper - lower) / 2
            centre, radius = self._scaled(centre, scale), self._scaled(radius, scale.abs())
            lower, upper = centre - radius, centre + radius
        if shift is not None:
            lower, upper = lower + shift, upper + shift
        return Interval(lower, upper)

    def backward(self, prims, lam, in_shapes, out_shape, pre):
        # lam . (s * a + t) = (lam * s) . a + sum(lam * t); constants broadcast as [1, *S] -> per row [*S]
        scale, shift = self.scale_shift(lam)
        n_s = len(out_shape)
        lam_in = lam if scale is None else self._scaled(lam, _per_sample(scale, n_s))
        term = None
        if shift is not None:
            t = _per_sample(shift, n_s).expand(tuple(out_shape))
            term = (lam * t).flatten(3).sum(-1)
        return [lam_in], term


def _per_sample(c: torch.Tensor, n_spatial: int) -> torch.Tensor:
    """A constant that broadcasts against ``[B, *S]`` as one that broadcasts against ``[*S]``."""
    if c.dim() > n_spatial:  # a leading batch axis of size 1
        c = c.reshape(c.shape[c.dim() - n_spatial:])
    return c


class ProductOp(BoundOp):
    """``a * b`` of two bounded tensors of one per-sample shape (no broadcasting between them).

    Interval: the extreme products of the endpoints (exact for independent factors). CROWN:
    McCormick's planes, ``a b >= l_b a + l_a b - l_a l_b`` below and ``a b <= u_b a + l_a b -
    l_a u_b`` above (the pair auto_LiRPA's ``BoundMul`` uses; ``prims.product_backward``).
    """

    kind = "nonlinear"
    n_inputs = 2
    relaxation = "McCormick planes"

    def forward(self, a: torch.Tensor, b: torch.Tensor, update_running_stats: bool = True) -> torch.Tensor:
        return a * b

    def out_shape(self, a: Shape, b: Shape) -> Shape:
        if tuple(a) != tuple(b):
            raise ValueError(f"{self.where} multiplies tensors of different per-sample shapes {a} and {b}; gmbound "
                             "bounds products of equal shapes (no broadcasting between two variable tensors)")
        return a

    def interval(self, prims, a: Interval, b: Interval) -> Interval:
        return Interval(*prims.interval_product(materialise(a, prims), materialise(b, prims)))

    def backward(self, prims, lam, in_shapes, out_shape, pre):
        lam_a, lam_b, term = prims.product_backward(lam, pre[0], pre[1])
        return [lam_a, lam_b], term

"""Average pooling (``AvgPool2d``, ``F.avg_pool2d``, adaptive average pooling) and max pooling.

Average pooling is a linear map with non-negative weights, so its interval step pools the bounds
(exact). Where every window has one size and one divisor it is a depthwise convolution with the
fixed weight ``1 / divisor``, and its CROWN step is the depthwise transposed convolution
(``prims.avg_pool2d_backward``). Otherwise (``ceil_mode=True``, ``count_include_pad=False``, adaptive
pooling to a size that does not divide the input) windows differ in size or divisor, and the CROWN
step is the map's adjoint, ATen's pooling backward applied to Lambda. All run on ATen's kernels.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .affine import transpose_padding
from .base import BoundOp, Interval, Shape, materialise

IntPair = tuple[int, int]


def _pair(v: Union[int, Sequence[int]]) -> IntPair:
    if isinstance(v, int):
        return (v, v)
    v = tuple(v)
    return (v[0], v[0]) if len(v) == 1 else (int(v[0]), int(v[1]))


class AvgPool2dOp(BoundOp):
    """Average pooling of ``[C, H, W]``: any kernel, stride, padding, ``ceil_mode``, ``count_include_pad``, divisor.

    ``adaptive``: an output size ``(h, w)`` (entries None keep the input size) instead of a kernel.
    """

    def __init__(self, module, where: str, kernel=None, stride=None, padding=0,
                 divisor: Optional[int] = None, adaptive: Optional[tuple] = None, ceil_mode: bool = False,
                 count_include_pad: bool = True):
        super().__init__(module, where)
        self.adaptive = None if adaptive is None else tuple(adaptive)
        if adaptive is None:
            self.kernel = _pair(kernel)
            self.stride = _pair(stride if stride is not None and stride != [] else kernel)
            self.padding = _pair(padding)
        self.divisor = divisor
        self.ceil_mode, self.count_include_pad = bool(ceil_mode), bool(count_include_pad)

    def _check_rank(self, in_shape: Shape) -> None:
        if len(in_shape) != 3:
            raise ValueError(f"{self.where} expects images [C, H, W] but receives shape {tuple(in_shape)}")

    def _adaptive_size(self, in_shape: Shape) -> IntPair:
        return tuple(in_shape[1 + d] if self.adaptive[d] is None else int(self.adaptive[d]) for d in range(2))

    def geometry(self, in_shape: Shape) -> Optional[tuple[IntPair, IntPair, IntPair, int]]:
        """``(kernel, stride, padding, divisor)`` of the one fixed-weight convolution the op is on ``[C, H, W]``,
        or None when its windows differ in size or divisor (then the CROWN step is the pooling's adjoint)."""
        self._check_rank(in_shape)
        if self.adaptive is None:
            if self.ceil_mode or (not self.count_include_pad and self.padding != (0, 0) and self.divisor is None):
                return None
            kernel, stride, padding = self.kernel, self.stride, self.padding
        else:
            size = self._adaptive_size(in_shape)
            if any(out >= 1 and in_shape[1 + d] % out for d, out in enumerate(size)):
                return None
            kernel = stride = tuple(in_shape[1 + d] // max(size[d], 1) for d in range(2))
            padding = (0, 0)
        divisor = self.divisor if self.divisor is not None else kernel[0] * kernel[1]
        return kernel, stride, padding, divisor

    def pool(self, a: torch.Tensor) -> torch.Tensor:
        """The op on a batch ``[B, C, H, W]``."""
        if self.adaptive is not None:
            return F.adaptive_avg_pool2d(a, self._adaptive_size(tuple(a.shape[1:])))
        return F.avg_pool2d(a, self.kernel, self.stride, self.padding, self.ceil_mode, self.count_include_pad,
                            self.divisor)

    def adjoint(self, lam: torch.Tensor, in_shape: Shape) -> torch.Tensor:
        """``P^T lam`` for the pooling map ``P`` (ATen's pooling backward, itself differentiable in ``lam``)."""
        flat = lam.reshape((-1,) + tuple(lam.shape[-3:]))
        # ATen reads only the input's shape; a real (uninitialised) tensor keeps every device's kernel on its
        # plain contiguous path
        like = torch.empty((flat.shape[0],) + tuple(in_shape), dtype=lam.dtype, device=lam.device)
        if self.adaptive is not None:
            out = torch.ops.aten._adaptive_avg_pool2d_backward(flat, like)
        else:
            out = torch.ops.aten.avg_pool2d_backward(flat, like, list(self.kernel), list(self.stride),
                                                     list(self.padding), self.ceil_mode, self.count_include_pad,
                                                     self.divisor)
        return out.reshape(tuple(lam.shape[:-3]) + tuple(in_shape))

    def forward(self, a: torch.Tensor, update_running_stats: bool = True) -> torch.Tensor:
        return self.pool(a)

    def out_shape(self, in_shape: Shape) -> Shape:
        self._check_rank(in_shape)
        a = torch.zeros((1,) + tuple(in_shape), device="meta")
        try:
            out = self.pool(a)
        except RuntimeError as err:
            raise ValueError(f"{self.where} cannot take an input of shape {tuple(in_shape)}: {err}") from None
        return tuple(out.shape[1:])

    def interval(self, prims, a: Interval) -> Interval:
        in_shape = tuple(a.lower.shape[2:])
        fixed = self.geometry(in_shape)
        if fixed is not None:
            kernel, stride, padding, divisor = fixed
            return Interval(*prims.interval_avg_pool2d(a.lower, a.upper, kernel, stride, padding, divisor,
                                                       a.relu_pending))
        lower, upper = materialise(a, prims)  # non-negative weights: pooling each bound is exact
        lead = lower.shape[:2]
        return Interval(*(self.pool(t.reshape((-1,) + in_shape)).unflatten(0, lead) for t in (lower, upper)))

    def backward(self, prims, lam, in_shapes, out_shape, pre):
        fixed = self.geometry(in_shapes[0])
        if fixed is None:
            return [self.adjoint(lam, in_shapes[0])], None
        kernel, stride, padding, divisor = fixed
        out_pad = transpose_padding(kernel, stride, padding, (1, 1), in_shapes[0][1:], out_shape[1:])
        return [prims.avg_pool2d_backward(lam, kernel, stride, padding, divisor, out_pad)], None


class MaxPool2dOp(BoundOp):
    """Max pooling of ``[C, H, W]`` (any kernel, stride, padding, dilation; windows may overlap; ``ceil_mode=False``).

    Interval: ``[maxpool(l), maxpool(u)]`` (exact: max is non-decreasing). CROWN: auto_LiRPA's
    non-optimised relaxation of each window, ``x_i* <= max <= x_i*`` where the entry ``i*`` of
    largest lower bound dominates its window (``l_i* >= u_j`` for all others), else ``x_i* <= max
    <= max_j u_j`` (``prims.max_pool2d_backward``). auto_LiRPA refuses overlapping windows in CROWN;
    here the Lambdas of overlapping windows are summed on the entries they share.
    """

    kind = "nonlinear"
    relaxation = "x_i* below (largest lower bound); x_i* or max u above (auto_LiRPA's)"

    def __init__(self, module, where: str, kernel, stride=None, padding=0, dilation=1):
        super().__init__(module, where)
        self.kernel = _pair(kernel)
        self.stride = _pair(stride if stride is not None and stride != [] else kernel)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)

    def forward(self, a: torch.Tensor, update_running_stats: bool = True) -> torch.Tensor:
        return F.max_pool2d(a, self.kernel, self.stride, self.padding, self.dilation)

    def out_shape(self, in_shape: Shape) -> Shape:
        if len(in_shape) != 3:
            raise ValueError(f"{self.where} expects images [C, H, W] but receives shape {tuple(in_shape)}")
        a = torch.zeros((1,) + tuple(in_shape), device="meta")
        try:
            out = F.max_pool2d(a, self.kernel, self.stride, self.padding, self.dilation)
        except RuntimeError as err:
            raise ValueError(f"{self.where} cannot take an input of shape {tuple(in_shape)}: {err}") from None
        return tuple(out.shape[1:])

    def interval(self, prims, a: Interval) -> Interval:
        lower, upper = materialise(a, prims)
        return Interval(*prims.interval_max_pool2d(lower, upper, self.kernel, self.stride, self.padding,
                                                   self.dilation))

    def backward(self, prims, lam, in_shapes, out_shape, pre):
        lam_in, term = prims.max_pool2d_backward(lam, pre[0], pre[1], self.kernel, self.stride, self.padding,
                                                 self.dilation)
        return [lam_in], term

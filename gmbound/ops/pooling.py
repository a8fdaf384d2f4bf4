"""Average pooling (``AvgPool2d``, ``F.avg_pool2d``, adaptive average pooling to a fixed size).

Average pooling is a depthwise convolution with the fixed weight ``1 / divisor``; its interval
step pools the bounds (non-negative weights: exact) and its CROWN step is the depthwise
transposed convolution. Both run on ATen's pooling / convolution kernels on every backend.
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
    """Average pooling of ``[C, H, W]`` with ``count_include_pad=True`` and ``ceil_mode=False``.

    ``adaptive``: an output size ``(h, w)`` (entries None keep the input size) instead of a
    kernel; the input size must be a multiple of it, so that every window has one size.
    """

    def __init__(self, module, where: str, kernel=None, stride=None, padding=0,
                 divisor: Optional[int] = None, adaptive: Optional[tuple] = None):
        super().__init__(module, where)
        self.adaptive = None if adaptive is None else tuple(adaptive)
        if adaptive is None:
            self.kernel = _pair(kernel)
            self.stride = _pair(stride if stride is not None and stride != [] else kernel)
            self.padding = _pair(padding)
        self.divisor = divisor

    def geometry(self, in_shape: Shape) -> tuple[IntPair, IntPair, IntPair, int]:
        """``(kernel, stride, padding, divisor)`` for a per-sample input shape ``[C, H, W]``."""
        if len(in_shape) != 3:
            raise ValueError(f"{self.where} expects images [C, H, W] but receives shape {tuple(in_shape)}")
        if self.adaptive is None:
            kernel, stride, padding = self.kernel, self.stride, self.padding
        else:
            size = []
            for d in range(2):
                out = in_shape[1 + d] if self.adaptive[d] is None else int(self.adaptive[d])
                if out < 1 or in_shape[1 + d] % out:
                    raise ValueError(
                        f"{self.where}: adaptive average pooling from {tuple(in_shape[1:])} to {self.adaptive} has "
                        "windows of different sizes; gmbound bounds it when the input size is a multiple of the "
                        "output size")
                size.append(in_shape[1 + d] // out)
            kernel = stride = (size[0], size[1])
            padding = (0, 0)
        divisor = self.divisor if self.divisor is not None else kernel[0] * kernel[1]
        return kernel, stride, padding, divisor

    def forward(self, a: torch.Tensor, update_running_stats: bool = True) -> torch.Tensor:
        kernel, stride, padding, divisor = self.geometry(tuple(a.shape[1:]))
        return F.avg_pool2d(a, kernel, stride, padding, False, True, divisor)

    def out_shape(self, in_shape: Shape) -> Shape:
        kernel, stride, padding, _ = self.geometry(in_shape)
        a = torch.zeros((1,) + tuple(in_shape), device="meta")
        try:
            out = F.avg_pool2d(a, kernel, stride, padding)
        except RuntimeError as err:
            raise ValueError(f"{self.where} cannot take an input of shape {tuple(in_shape)}: {err}") from None
        return tuple(out.shape[1:])

    def interval(self, prims, a: Interval) -> Interval:
        kernel, stride, padding, divisor = self.geometry(tuple(a.lower.shape[2:]))
        return Interval(*prims.interval_avg_pool2d(a.lower, a.upper, kernel, stride, padding, divisor,
                                                   a.relu_pending))

    def backward(self, prims, lam, in_shapes, out_shape, pre):
        kernel, stride, padding, divisor = self.geometry(in_shapes[0])
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

"""The primitive contract: what a primitive set must provide for the drivers of ``gmbound.propagation``.

Two sets implement it: ``gmbound.reference.primitives`` (pure PyTorch, the oracle) and
``gmbound.engine.compiled`` (the kernels of ``gmbound._C``). Shapes, with ``S`` a per-sample
layer shape: interval bounds ``[N, B, *S]`` (radius axis first); Lambda ``[N or 1, B, K, *S]``;
bias and bound terms ``[N or 1, B, K]``. ``relu_input=True`` means "apply a ReLU to the bounds
first" (the driver applies ReLUs lazily, inside the next affine step).
"""
from __future__ import annotations

from typing import Optional, Protocol, Sequence

import torch

Tensor = torch.Tensor
Pair = tuple[Tensor, Tensor]
# (stride, padding, dilation, output_padding) of a convolution; None for a Linear layer.
ConvGeometry = Optional[tuple[Sequence[int], Sequence[int], Sequence[int], Sequence[int]]]


class Primitives(Protocol):
    """Bound primitives (module-level functions of a primitive set). See the module docstring."""

    def input_box(self, x: Tensor, radii: Tensor, x_min: Optional[Tensor], x_max: Optional[Tensor]) -> Pair: ...

    def relu_bounds(self, lower: Tensor, upper: Tensor) -> Pair: ...

    def interval_linear(self, lower: Tensor, upper: Tensor, weight: Tensor, bias: Optional[Tensor],
                        relu_input: bool) -> Pair: ...

    def interval_conv2d(self, lower: Tensor, upper: Tensor, weight: Tensor, bias: Optional[Tensor], stride,
                        padding, dilation, relu_input: bool) -> Pair: ...

    def interval_channel_affine(self, lower: Tensor, upper: Tensor, scale: Tensor, shift: Tensor,
                                relu_input: bool) -> Pair: ...

    def interval_avg_pool2d(self, lower: Tensor, upper: Tensor, kernel, stride, padding, divisor: int,
                            relu_input: bool) -> Pair: ...

    def relu_backward(self, lam: Tensor, lower: Tensor, upper: Tensor, negative_slope: float = 0.0) -> Pair: ...

    def linear_backward(self, lam: Tensor, weight: Tensor, bias: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]: ...

    def conv2d_backward(self, lam: Tensor, weight: Tensor, bias: Optional[Tensor], stride, padding, dilation,
                        output_padding) -> tuple[Tensor, Optional[Tensor]]: ...

    def channel_affine_backward(self, lam: Tensor, scale: Tensor, shift: Tensor) -> Pair: ...

    def avg_pool2d_backward(self, lam: Tensor, kernel, stride, padding, divisor: int, output_padding) -> Tensor: ...

    def relaxation_backward(self, lam: Tensor, lower_slope: Tensor, lower_intercept: Tensor, upper_slope: Tensor,
                            upper_intercept: Tensor) -> Pair: ...

    def interval_max_pool2d(self, lower: Tensor, upper: Tensor, kernel, stride, padding, dilation) -> Pair: ...

    def max_pool2d_backward(self, lam: Tensor, lower: Tensor, upper: Tensor, kernel, stride, padding,
                            dilation) -> Pair: ...

    def interval_product(self, a_bounds: Pair, b_bounds: Pair) -> Pair: ...

    def product_backward(self, lam: Tensor, a_bounds: Pair, b_bounds: Pair) -> tuple[Tensor, Tensor, Tensor]: ...

    def concretize(self, lam: Tensor, lower: Tensor, upper: Tensor, relu_input: bool) -> Tensor: ...


class FusedPrimitives(Primitives, Protocol):
    """Optional extension: the CROWN step through a ReLU and the Linear / Conv2d below it at once.

    The drivers use it when a primitive set has it (``hasattr``); it must equal ``relu_backward``
    followed by ``linear_backward`` / ``conv2d_backward`` (bias terms summed). With ``unflatten =
    (C, H, W)`` (a Linear layer that reads a flattened image) Lambda is returned as ``[M, B, K, C, H,
    W]``, in whatever memory layout suits the set's convolution steps.
    """

    def relu_affine_backward(self, lam: Tensor, lower: Tensor, upper: Tensor, weight: Tensor,
                             bias: Optional[Tensor], conv: ConvGeometry = None,
                             unflatten: Optional[tuple[int, int, int]] = None,
                             negative_slope: float = 0.0) -> Pair: ...

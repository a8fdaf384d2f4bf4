"""The compiled primitive set: ``gmbound.reference.primitives``' contract on ``torch.ops.gmbound``.

The dispatcher runs the CPU or CUDA kernels by the tensors' device. Per-channel affine steps
(BatchNorm, Normalize) and average pooling stay on the reference ops, which are already single
element-wise or ATen pooling / convolution passes.

Two fusions beyond the reference contract, both optional for the drivers:

* ``relu_affine_backward``: the CROWN step through a ReLU and the Linear / Conv2d below it in one
  op (``propagation.backward_pass`` uses it when a primitive set has it);
* the first layer reads the input box directly: ``input_box`` tags the box it returns, and the
  interval step of a Linear / Conv2d applied to that untouched box runs ``interval_input_*``,
  which computes the shared centre ``W x + b`` once for all radii when the box is unclipped.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _extension
from ..reference import primitives as _ref

if not _extension.available():
    raise ImportError(_extension.unavailable_reason())
_ops = torch.ops.gmbound

# The reference versions are used as they are.
relu_bounds = _ref.relu_bounds
relu_relaxation = _ref.relu_relaxation
interval_channel_affine = _ref.interval_channel_affine
channel_affine_backward = _ref.channel_affine_backward
# Average pooling: ATen's pooling kernel on the bounds (monotone) and a depthwise transposed
# convolution for CROWN are already single fused passes; no kernel of ours would do less work.
interval_avg_pool2d = _ref.interval_avg_pool2d
avg_pool2d_backward = _ref.avg_pool2d_backward
# The relaxations of the other nonlinear ops (gmbound.ops.nonlinear, products) run on the reference
# ops between the compiled steps: they read and write ordinary tensors of any layout. Leaky ReLU
# runs on the ReLU kernels (relu_backward's negative_slope); max pooling's interval step is ATen's
# pooling (exact, monotone) and its CROWN step a kernel of ours (max_pool2d_backward below).
relaxation_backward = _ref.relaxation_backward
interval_max_pool2d = _ref.interval_max_pool2d
interval_product = _ref.interval_product
product_backward = _ref.product_backward

_BOX_TAG = "_gmbound_input_box"
_KERNEL_DTYPES = (torch.float32, torch.float64)


def _kernels_take(t: torch.Tensor) -> bool:
    """The kernels take float32 / float64; other dtypes go to the reference ops."""
    return t.dtype in _KERNEL_DTYPES


# ----------------------------------------------------------------------------- input box
def input_box(x: torch.Tensor, radii: torch.Tensor, x_min: Optional[torch.Tensor],
              x_max: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """As the reference; the box remembers where it came from, so the first layer can read ``x``."""
    lower, upper = _ref.input_box(x, radii, x_min, x_max)
    source = (x, radii, x_min, x_max)
    tensors = tuple(t for t in (lower, upper) + source if t is not None)
    # Inference tensors keep no version counter, so an in-place change could not be noticed:
    # leave such boxes untagged (the first layer then reads the box like any other bounds).
    if not any(t.is_inference() for t in tensors):
        setattr(lower, _BOX_TAG, (upper, source, tuple(t._version for t in tensors)))
    return lower, upper


def _box_source(lower: torch.Tensor, upper: torch.Tensor):
    """``(x, radii, x_min, x_max)`` when ``[lower, upper]`` is an untouched box from ``input_box``."""
    tag = getattr(lower, _BOX_TAG, None)
    if tag is None:
        return None
    tagged_upper, source, versions = tag
    if tagged_upper is not upper:
        return None
    now = tuple(t._version for t in (lower, upper) + source if t is not None)
    return source if now == versions else None


# ----------------------------------------------------------------------------- IBP steps
def interval_linear(lower, upper, weight, bias, relu_input):
    if not _kernels_take(lower):
        return _ref.interval_linear(lower, upper, weight, bias, relu_input)
    source = None if relu_input else _box_source(lower, upper)
    if source is not None:
        x, radii, x_min, x_max = source
        if x.dim() == 2:
            return _ops.interval_input_linear(x, radii, x_min, x_max, weight, bias)
    return _ops.interval_linear(lower, upper, weight, bias, relu_input)


def interval_conv2d(lower, upper, weight, bias, stride, padding, dilation, relu_input):
    if not _kernels_take(lower):
        return _ref.interval_conv2d(lower, upper, weight, bias, stride, padding, dilation, relu_input)
    stride, padding, dilation = list(stride), list(padding), list(dilation)
    source = None if relu_input else _box_source(lower, upper)
    if source is not None:
        x, radii, x_min, x_max = source
        if x.dim() == 4:
            return _ops.interval_input_conv2d(x, radii, x_min, x_max, weight, bias, stride, padding, dilation)
    return _ops.interval_conv2d(lower, upper, weight, bias, stride, padding, dilation, relu_input)


# ----------------------------------------------------------------------------- CROWN steps
def relu_backward(lam, lower, upper, negative_slope: float = 0.0):
    if not _kernels_take(lam):
        return _ref.relu_backward(lam, lower, upper, negative_slope)
    return _ops.relu_relax(lam, lower, upper, float(negative_slope))


def linear_backward(lam, weight, bias):
    if not _kernels_take(lam):
        return _ref.linear_backward(lam, weight, bias)
    lam_in, term = _ops.crown_linear_step(lam, None, None, weight, bias)
    return lam_in, (term if bias is not None else None)


def conv2d_backward(lam, weight, bias, stride, padding, dilation, output_padding):
    if not _kernels_take(lam):
        return _ref.conv2d_backward(lam, weight, bias, stride, padding, dilation, output_padding)
    lam_in, term = _ops.crown_conv2d_step(lam, None, None, weight, bias, list(stride), list(padding),
                                          list(dilation), list(output_padding))
    return lam_in, (term if bias is not None else None)


def relu_affine_backward(lam, lower, upper, weight, bias, conv=None, unflatten=None, negative_slope: float = 0.0):
    """A ReLU (pre-activation bounds ``[lower, upper]``) and the Linear / Conv2d below it, in one step.

    ``conv``: None for a Linear layer, else ``(stride, padding, dilation, output_padding)`` of the
    convolution. Returns Lambda on the affine op's input and the bias term, as the two reference
    steps together do. ``unflatten=(C, H, W)`` (a Linear reading a flattened image): Lambda comes
    back as ``[M, B, K, C, H, W]``, on CPU in the channels-last blocks the convolution kernels work in.
    ``negative_slope`` in ``[0, 1]``: a leaky ReLU instead of the ReLU.
    """
    negative_slope = float(negative_slope)
    if not _kernels_take(lam):
        lam, term = _ref.relu_backward(lam, lower, upper, negative_slope)
        if conv is None:
            lam, t2 = _ref.linear_backward(lam, weight, bias)
        else:
            lam, t2 = _ref.conv2d_backward(lam, weight, bias, *conv)
        lam = lam if unflatten is None else lam.unflatten(-1, tuple(unflatten))
        return lam, (term if t2 is None else term + t2)
    if conv is None:
        if unflatten is None:
            return _ops.crown_linear_step(lam, lower, upper, weight, bias, negative_slope)
        return _linear_step_unflattened(lam, lower, upper, weight, bias, tuple(unflatten), negative_slope)
    stride, padding, dilation, out_pad = conv
    return _ops.crown_conv2d_step(lam, lower, upper, weight, bias, list(stride), list(padding), list(dilation),
                                  list(out_pad), negative_slope)


def _linear_step_unflattened(lam, lower, upper, weight, bias, chw: tuple[int, int, int], negative_slope: float):
    """``crown_linear_step`` whose Lambda lands on a flattened image ``[C, H, W]``, as ``[..., C, H, W]``.

    The CPU convolution steps below work on channels-last blocks: a Lambda in the flattened
    (c, h, w) order would be copied into that layout on the way down and its gradient copied back
    on the way up (three copies of the largest Lambda of the step). Instead the weight's columns are
    put in (h, w, c) order, so the product itself comes out channels-last (a view, no copy). That
    costs a copy of the weight, so it is done when the weight has no more entries than the Lambda.
    """
    c, h, w = chw
    rows = lam.shape[1] * lam.shape[2] * (lower.shape[0] if lower is not None else lam.shape[0])
    if lam.device.type != "cpu" or c <= 1 or weight.shape[0] > rows:
        lam_in, term = _ops.crown_linear_step(lam, lower, upper, weight, bias, negative_slope)
        return lam_in.unflatten(-1, chw), term
    w_hwc = weight.unflatten(1, chw).permute(0, 2, 3, 1).flatten(1)
    lam_in, term = _ops.crown_linear_step(lam, lower, upper, w_hwc, bias, negative_slope)
    return lam_in.unflatten(-1, (h, w, c)).permute(0, 1, 2, 5, 3, 4), term


def max_pool2d_backward(lam, lower, upper, kernel, stride, padding, dilation):
    """The reference's choice of each window's lines (bounds-sized), then the Lambda-sized step in one kernel."""
    lines = _ref.max_pool2d_relaxation(lower, upper, kernel, stride, padding, dilation, lam.shape[-2:])
    if not _kernels_take(lam):
        return _ref.max_pool2d_relax(lam, *lines, lower.shape[-2:])
    return _ops.max_pool2d_relax(lam, *lines, list(lower.shape[-2:]))


def concretize(lam, lower, upper, relu_input):
    if not _kernels_take(lam):
        return _ref.concretize(lam, lower, upper, relu_input)
    return _ops.concretize(lam, lower, upper, relu_input)

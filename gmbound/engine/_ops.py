"""Python-side registrations for the ``torch.ops.gmbound`` operators (imported once ``gmbound._C`` loads).

* fake (shape-only) kernels, so ``torch.compile`` and ``opcheck`` can trace the ops; they give the
  very sizes and strides the real kernels return (channels-last blocks for convolution layers on
  CPU, contiguous elsewhere; a gradient laid out like its input);
* autograd formulas: each backward is itself a compiled op (``*_backward``), so the whole training
  step stays on the fused kernels, under the float32 policy its forward call ran under
  (``gmbound.precision``). Double backward is not supported.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Sequence

import torch

from .. import precision

ops = torch.ops.gmbound
_LIB = "gmbound::"


# ----------------------------------------------------------------------------- layout (mirrors composite.h)
def is_cl_block(t: torch.Tensor) -> bool:
    """``[..., C, H, W]`` stored as channels-last blocks (a 4-D channels_last tensor, first axis unflattened)."""
    d = t.dim()
    if d < 4:
        return False
    C, H, W = t.shape[-3:]
    if C <= 1 or t.numel() == 0:
        return False
    st = t.stride()
    if st[-3] != 1 or (W > 1 and st[-1] != C) or (H > 1 and st[-2] != W * C):
        return False
    expect = C * H * W
    for i in range(d - 4, -1, -1):
        if t.shape[i] > 1 and st[i] != expect:
            return False
        expect *= t.shape[i]
    return True


def _empty_layout(sizes: Sequence[int], like: torch.Tensor, cl: bool) -> torch.Tensor:
    sizes = tuple(sizes)
    if cl and len(sizes) >= 4 and sizes[-3] > 1:
        rows = math.prod(sizes[:-3])
        t = torch.empty((rows,) + sizes[-3:], dtype=like.dtype, device=like.device,
                        memory_format=torch.channels_last)
        return t.view(sizes)
    return torch.empty(sizes, dtype=like.dtype, device=like.device)


def _conv_cl(t: torch.Tensor) -> bool:
    """Convolution-layer tensors are kept channels-last on CPU (oneDNN is faster on them)."""
    return t.device.type == "cpu"


def _none(like: torch.Tensor) -> torch.Tensor:
    return like.new_empty((0,))


def _grad_like(need: bool, ref: Optional[torch.Tensor], fallback: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(ref) if need and ref is not None else _none(fallback)


def _conv_out(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _convT_out(size: int, k: int, s: int, p: int, d: int, op: int) -> int:
    return (size - 1) * s - 2 * p + d * (k - 1) + op + 1


# ----------------------------------------------------------------------------- fake kernels: forward ops
@torch.library.register_fake(_LIB + "interval_linear")
def _(lower, upper, weight, bias, relu_input):
    n, b = lower.shape[:2]
    out = lower.new_empty((n, b, weight.shape[0]))
    return out, torch.empty_like(out)


@torch.library.register_fake(_LIB + "interval_conv2d")
def _(lower, upper, weight, bias, stride, padding, dilation, relu_input):
    n, b, _, h, w = lower.shape
    kh, kw = weight.shape[-2:]
    sizes = (n, b, weight.shape[0], _conv_out(h, kh, stride[0], padding[0], dilation[0]),
             _conv_out(w, kw, stride[1], padding[1], dilation[1]))
    return _empty_layout(sizes, lower, _conv_cl(lower)), _empty_layout(sizes, lower, _conv_cl(lower))


@torch.library.register_fake(_LIB + "interval_input_linear")
def _(x, radii, x_min, x_max, weight, bias):
    out = x.new_empty((radii.shape[0], x.shape[0], weight.shape[0]))
    return out, torch.empty_like(out)


@torch.library.register_fake(_LIB + "interval_input_conv2d")
def _(x, radii, x_min, x_max, weight, bias, stride, padding, dilation):
    _, _, h, w = x.shape
    kh, kw = weight.shape[-2:]
    sizes = (radii.shape[0], x.shape[0], weight.shape[0], _conv_out(h, kh, stride[0], padding[0], dilation[0]),
             _conv_out(w, kw, stride[1], padding[1], dilation[1]))
    return _empty_layout(sizes, x, _conv_cl(x)), _empty_layout(sizes, x, _conv_cl(x))


@torch.library.register_fake(_LIB + "relu_relax")
def _(lam, lower, upper, negative_slope=0.0):
    n, b = lower.shape[:2]
    k = lam.shape[2]
    z = _empty_layout((n, b, k) + tuple(lower.shape[2:]), lam, _conv_cl(lower) and is_cl_block(lower))
    return z, lam.new_empty((n, b, k))


@torch.library.register_fake(_LIB + "crown_linear_step")
def _(lam, lower, upper, weight, bias, negative_slope=0.0):
    m = lower.shape[0] if lower is not None else lam.shape[0]
    b, k = lam.shape[1:3]
    return lam.new_empty((m, b, k, weight.shape[1])), lam.new_empty((m, b, k))


@torch.library.register_fake(_LIB + "crown_conv2d_step")
def _(lam, lower, upper, weight, bias, stride, padding, dilation, output_padding, negative_slope=0.0):
    m = lower.shape[0] if lower is not None else lam.shape[0]
    b, k, _, h, w = lam.shape[1:]
    kh, kw = weight.shape[-2:]
    sizes = (m, b, k, weight.shape[1],
             _convT_out(h, kh, stride[0], padding[0], dilation[0], output_padding[0]),
             _convT_out(w, kw, stride[1], padding[1], dilation[1], output_padding[1]))
    return _empty_layout(sizes, lam, _conv_cl(lam)), lam.new_empty((m, b, k))


@torch.library.register_fake(_LIB + "concretize")
def _(lam, lower, upper, relu_input):
    return lam.new_empty((lower.shape[0], lower.shape[1], lam.shape[2]))


@torch.library.register_fake(_LIB + "max_pool2d_relax")
def _(lam, index, up_slope, up_bias, in_hw):
    n, b, c = up_slope.shape[:3]
    sizes = (n, b, lam.shape[2], c) + tuple(in_hw)
    return _empty_layout(sizes, lam, _conv_cl(lam) and is_cl_block(lam)), lam.new_empty((n, b, lam.shape[2]))


# ----------------------------------------------------------------------------- fake kernels: backward ops
@torch.library.register_fake(_LIB + "interval_linear_backward")
def _(grad_lower, grad_upper, lower, upper, weight, has_bias, relu_input, output_mask):
    return (_grad_like(output_mask[0], lower, lower), _grad_like(output_mask[1], upper, lower),
            _grad_like(output_mask[2], weight, lower),
            weight.new_empty((weight.shape[0],)) if output_mask[3] and has_bias else _none(weight))


@torch.library.register_fake(_LIB + "interval_conv2d_backward")
def _(grad_lower, grad_upper, lower, upper, weight, has_bias, stride, padding, dilation, relu_input, output_mask):
    return (_grad_like(output_mask[0], lower, lower), _grad_like(output_mask[1], upper, lower),
            _grad_like(output_mask[2], weight, lower),
            weight.new_empty((weight.shape[0],)) if output_mask[3] and has_bias else _none(weight))


def _fake_input_backward(x, radii, x_min, x_max, weight, has_bias, output_mask):
    return (_grad_like(output_mask[0], x, x), _grad_like(output_mask[1], radii, x),
            _grad_like(output_mask[2], x_min, x), _grad_like(output_mask[3], x_max, x),
            _grad_like(output_mask[4], weight, x),
            weight.new_empty((weight.shape[0],)) if output_mask[5] and has_bias else _none(x))


@torch.library.register_fake(_LIB + "interval_input_linear_backward")
def _(grad_lower, grad_upper, x, radii, x_min, x_max, weight, has_bias, output_mask):
    return _fake_input_backward(x, radii, x_min, x_max, weight, has_bias, output_mask)


@torch.library.register_fake(_LIB + "interval_input_conv2d_backward")
def _(grad_lower, grad_upper, x, radii, x_min, x_max, weight, has_bias, stride, padding, dilation, output_mask):
    return _fake_input_backward(x, radii, x_min, x_max, weight, has_bias, output_mask)


@torch.library.register_fake(_LIB + "relu_relax_backward")
def _(grad_lam, grad_bias, lam, lower, upper, output_mask, negative_slope=0.0):
    return (_grad_like(output_mask[0], lam, lam), _grad_like(output_mask[1], lower, lam),
            _grad_like(output_mask[2], upper, lam))


def _fake_step_backward(lam, lower, upper, weight, bias, output_mask):
    return (_grad_like(output_mask[0], lam, lam), _grad_like(output_mask[1], lower, lam),
            _grad_like(output_mask[2], upper, lam), _grad_like(output_mask[3], weight, lam),
            weight.new_empty((weight.shape[0],)) if output_mask[4] and bias is not None else _none(lam))


@torch.library.register_fake(_LIB + "crown_linear_step_backward")
def _(grad_lam_in, grad_bias, lam, lower, upper, weight, bias, output_mask, negative_slope=0.0):
    return _fake_step_backward(lam, lower, upper, weight, bias, output_mask)


@torch.library.register_fake(_LIB + "crown_conv2d_step_backward")
def _(grad_lam_in, grad_bias, lam, lower, upper, weight, bias, stride, padding, dilation, output_padding,
      output_mask, negative_slope=0.0):
    return _fake_step_backward(lam, lower, upper, weight, bias, output_mask)


@torch.library.register_fake(_LIB + "concretize_backward")
def _(grad_out, lam, lower, upper, relu_input, output_mask):
    return (_grad_like(output_mask[0], lam, lam), _grad_like(output_mask[1], lower, lam),
            _grad_like(output_mask[2], upper, lam))


@torch.library.register_fake(_LIB + "max_pool2d_relax_backward")
def _(grad_lam_in, grad_bias, lam, index, up_slope, up_bias, in_hw, output_mask):
    return (_grad_like(output_mask[0], lam, lam), _grad_like(output_mask[1], up_slope, lam),
            _grad_like(output_mask[2], up_bias, lam))


# ----------------------------------------------------------------------------- autograd
def _register_autograd(name: str, backward, setup_context) -> None:
    """``torch.library.register_autograd`` with the float32 policy of the forward call.

    The backward ops run during ``loss.backward()``, outside the ``strict_float32`` block of the
    call that made the bounds; each op records whether its forward ran strict and its backward
    runs under the same policy (so TF32 convolutions reach the gradients only when opted into).
    """

    def setup(ctx, inputs, output):
        ctx.strict_fp32 = precision.strict_active()
        setup_context(ctx, inputs, output)

    @functools.wraps(backward)
    def run(ctx, *grads):
        with precision.strict_float32(ctx.strict_fp32):
            return backward(ctx, *grads)

    torch.library.register_autograd(_LIB + name, run, setup_context=setup)


def _grad(g: Optional[torch.Tensor], shape_like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(shape_like) if g is None else g


def _pick(t: torch.Tensor, need: bool) -> Optional[torch.Tensor]:
    return t if need else None


def _setup_interval(ctx, inputs, output):
    lower, upper, weight, bias = inputs[:4]
    ctx.save_for_backward(lower, upper, weight)
    ctx.has_bias = bias is not None
    ctx.extra = inputs[4:]


def _backward_interval_linear(ctx, g_lower, g_upper):
    lower, upper, weight = ctx.saved_tensors
    (relu_input,) = ctx.extra
    need = ctx.needs_input_grad
    mask = [need[0], need[1], need[2], need[3] and ctx.has_bias]
    ref = g_lower if g_lower is not None else g_upper
    gl, gu, gw, gb = ops.interval_linear_backward(_grad(g_lower, ref), _grad(g_upper, ref), lower, upper, weight,
                                                  ctx.has_bias, relu_input, mask)
    return _pick(gl, mask[0]), _pick(gu, mask[1]), _pick(gw, mask[2]), _pick(gb, mask[3]), None


def _backward_interval_conv2d(ctx, g_lower, g_upper):
    lower, upper, weight = ctx.saved_tensors
    stride, padding, dilation, relu_input = ctx.extra
    need = ctx.needs_input_grad
    mask = [need[0], need[1], need[2], need[3] and ctx.has_bias]
    ref = g_lower if g_lower is not None else g_upper
    gl, gu, gw, gb = ops.interval_conv2d_backward(_grad(g_lower, ref), _grad(g_upper, ref), lower, upper, weight,
                                                  ctx.has_bias, stride, padding, dilation, relu_input, mask)
    return (_pick(gl, mask[0]), _pick(gu, mask[1]), _pick(gw, mask[2]), _pick(gb, mask[3]),
            None, None, None, None)


_register_autograd("interval_linear", _backward_interval_linear, setup_context=_setup_interval)
_register_autograd("interval_conv2d", _backward_interval_conv2d, setup_context=_setup_interval)


def _setup_input(ctx, inputs, output):
    x, radii, x_min, x_max, weight, bias = inputs[:6]
    ctx.save_for_backward(x, radii, x_min, x_max, weight)
    ctx.has_bias = bias is not None
    ctx.extra = inputs[6:]


def _input_mask(ctx):
    need = ctx.needs_input_grad
    return [need[0], need[1], need[2], need[3], need[4], need[5] and ctx.has_bias]


def _backward_input_linear(ctx, g_lower, g_upper):
    x, radii, x_min, x_max, weight = ctx.saved_tensors
    mask = _input_mask(ctx)
    ref = g_lower if g_lower is not None else g_upper
    grads = ops.interval_input_linear_backward(_grad(g_lower, ref), _grad(g_upper, ref), x, radii, x_min, x_max,
                                               weight, ctx.has_bias, mask)
    return tuple(_pick(g, m) for g, m in zip(grads, mask))


def _backward_input_conv2d(ctx, g_lower, g_upper):
    x, radii, x_min, x_max, weight = ctx.saved_tensors
    stride, padding, dilation = ctx.extra
    mask = _input_mask(ctx)
    ref = g_lower if g_lower is not None else g_upper
    grads = ops.interval_input_conv2d_backward(_grad(g_lower, ref), _grad(g_upper, ref), x, radii, x_min, x_max,
                                               weight, ctx.has_bias, stride, padding, dilation, mask)
    return tuple(_pick(g, m) for g, m in zip(grads, mask)) + (None, None, None)


_register_autograd("interval_input_linear", _backward_input_linear, setup_context=_setup_input)
_register_autograd("interval_input_conv2d", _backward_input_conv2d, setup_context=_setup_input)


def _setup_relax(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:3])
    ctx.n_inputs = len(inputs)
    ctx.negative_slope = inputs[3] if len(inputs) > 3 else 0.0
    ctx.bias_shape = output[1].shape


def _backward_relax(ctx, g_z, g_bias):
    lam, lower, upper = ctx.saved_tensors
    need = ctx.needs_input_grad
    mask = [need[0], need[1], need[2]]
    if g_z is None:
        g_z = lam.new_zeros((lower.shape[0],) + tuple(lam.shape[1:]))
    if g_bias is None:
        g_bias = lam.new_zeros(ctx.bias_shape)
    grads = ops.relu_relax_backward(g_z, g_bias, lam, lower, upper, mask, ctx.negative_slope)
    return tuple(_pick(g, m) for g, m in zip(grads, mask)) + (None,) * (ctx.n_inputs - 3)


_register_autograd("relu_relax", _backward_relax, setup_context=_setup_relax)


def _setup_step(ctx, inputs, output):
    # inputs: lam, lower, upper, weight, bias, then the convolution's geometry (conv step only) and
    # negative_slope (when the caller passed it)
    lam, lower, upper, weight, bias = inputs[:5]
    ctx.save_for_backward(lam, lower, upper, weight, bias)
    ctx.n_inputs = len(inputs)
    conv_geometry = 4 if ctx.n_inputs >= 9 else 0
    ctx.extra = inputs[5:5 + conv_geometry]
    ctx.negative_slope = inputs[5 + conv_geometry] if ctx.n_inputs > 5 + conv_geometry else 0.0
    ctx.out_shapes = (output[0].shape, output[1].shape)


def _step_grads(ctx, g_in, g_bias):
    if g_in is None:
        g_in = ctx.saved_tensors[0].new_zeros(ctx.out_shapes[0])
    if g_bias is None:
        g_bias = ctx.saved_tensors[0].new_zeros(ctx.out_shapes[1])
    need = ctx.needs_input_grad
    return g_in, g_bias, [need[0], need[1], need[2], need[3], need[4]]


def _backward_linear_step(ctx, g_in, g_bias):
    lam, lower, upper, weight, bias = ctx.saved_tensors
    g_in, g_bias, mask = _step_grads(ctx, g_in, g_bias)
    grads = ops.crown_linear_step_backward(g_in, g_bias, lam, lower, upper, weight, bias, mask, ctx.negative_slope)
    return tuple(_pick(g, m) for g, m in zip(grads, mask)) + (None,) * (ctx.n_inputs - 5)


def _backward_conv_step(ctx, g_in, g_bias):
    lam, lower, upper, weight, bias = ctx.saved_tensors
    g_in, g_bias, mask = _step_grads(ctx, g_in, g_bias)
    grads = ops.crown_conv2d_step_backward(g_in, g_bias, lam, lower, upper, weight, bias, *ctx.extra, mask,
                                           ctx.negative_slope)
    return tuple(_pick(g, m) for g, m in zip(grads, mask)) + (None,) * (ctx.n_inputs - 5)


_register_autograd("crown_linear_step", _backward_linear_step, setup_context=_setup_step)
_register_autograd("crown_conv2d_step", _backward_conv_step, setup_context=_setup_step)


def _setup_concretize(ctx, inputs, output):
    lam, lower, upper, relu_input = inputs
    ctx.save_for_backward(lam, lower, upper)
    ctx.relu_input = relu_input


def _backward_concretize(ctx, g_out):
    lam, lower, upper = ctx.saved_tensors
    need = ctx.needs_input_grad
    mask = [need[0], need[1], need[2]]
    grads = ops.concretize_backward(g_out, lam, lower, upper, ctx.relu_input, mask)
    return tuple(_pick(g, m) for g, m in zip(grads, mask)) + (None,)


_register_autograd("concretize", _backward_concretize, setup_context=_setup_concretize)


def _setup_max_pool(ctx, inputs, output):
    lam, index, up_slope, up_bias, in_hw = inputs
    ctx.save_for_backward(lam, index, up_slope, up_bias)
    ctx.in_hw = in_hw
    ctx.out_shapes = (output[0].shape, output[1].shape)


def _backward_max_pool(ctx, g_lam_in, g_bias):
    lam, index, up_slope, up_bias = ctx.saved_tensors
    g_lam_in = lam.new_zeros(ctx.out_shapes[0]) if g_lam_in is None else g_lam_in
    g_bias = lam.new_zeros(ctx.out_shapes[1]) if g_bias is None else g_bias
    need = ctx.needs_input_grad
    mask = [need[0], need[2], need[3]]
    g_lam, g_slope, g_bias_line = ops.max_pool2d_relax_backward(g_lam_in, g_bias, lam, index, up_slope, up_bias,
                                                                ctx.in_hw, mask)
    return _pick(g_lam, mask[0]), None, _pick(g_slope, mask[1]), _pick(g_bias_line, mask[2]), None


_register_autograd("max_pool2d_relax", _backward_max_pool, setup_context=_setup_max_pool)

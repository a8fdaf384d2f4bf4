"""Affine bound ops with learned weights: Linear, Conv2d and per-channel affine maps (BatchNorm, Normalize)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import Normalize
from ..validation import BoundInputError
from .base import BoundOp, Interval, Shape
from .shape import pad_adjoint


class WeightedOp(BoundOp):
    """An op whose module carries ``weight`` and ``bias``, read at call time (never cached)."""

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight

    @property
    def bias(self) -> Optional[torch.Tensor]:
        return self.module.bias


class LinearOp(WeightedOp):
    """``z = W a + b``."""

    def out_shape(self, in_shape: Shape) -> Shape:
        if len(in_shape) != 1 or in_shape[0] != self.weight.shape[1]:
            raise ValueError(f"{self.where} expects {self.weight.shape[1]} input features but receives shape "
                             f"{in_shape}")
        return (self.weight.shape[0],)

    def interval(self, prims, a: Interval) -> Interval:
        return Interval(*prims.interval_linear(a.lower, a.upper, self.weight, self.bias, a.relu_pending))

    def backward(self, prims, lam, in_shapes, out_shape, pre):
        lam_in, term = prims.linear_backward(lam, self.weight, self.bias)
        return [lam_in], term

    def fused_args(self, in_shape: Shape, out_shape: Shape):
        """``(weight, bias, conv)`` for ``relu_affine_backward`` (``conv`` None: a Linear layer)."""
        return self.weight, self.bias, None


def conv_padding(padding, kernel, dilation) -> tuple[int, int]:
    """A convolution's symmetric zero padding as numbers: ``'valid'`` is 0, ``'same'`` half the dilated kernel."""
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        return tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))
    return tuple(padding)


def conv_output_padding(op: "Conv2dOp", in_hw: tuple[int, int], out_hw: tuple[int, int]) -> tuple[int, int]:
    """``output_padding`` that makes ``conv_transpose2d`` return exactly the conv's input size.

    A strided convolution maps several input sizes to one output size; the transposed
    convolution needs the remainder to recover the one we came from.
    """
    return transpose_padding(op.weight.shape[-2:], op.stride, op.padding, op.dilation, in_hw, out_hw)


def transpose_padding(kernel, stride, padding, dilation, in_hw, out_hw) -> tuple[int, int]:
    """The ``output_padding`` of a window op (convolution, pooling) mapping ``in_hw`` to ``out_hw``."""
    pads = []
    for d in range(2):
        natural = (out_hw[d] - 1) * stride[d] - 2 * padding[d] + dilation[d] * (kernel[d] - 1) + 1
        pads.append(in_hw[d] - natural)
    return (pads[0], pads[1])


def dense_group_weight(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The ``groups = 1`` weight ``[C_out, C_in, kh, kw]`` of a grouped convolution's ``[C_out, C_in / g, kh, kw]``.

    Output channel ``o`` of group ``o // (C_out / g)`` reads only that group's input channels: the
    dense weight is block diagonal over the groups, zero elsewhere, so both convolutions are the
    same linear map (and its gradient reaches the grouped weight).
    """
    if groups == 1:
        return weight
    c_out, c_in_g = weight.shape[:2]
    grouped = weight.reshape(groups, c_out // groups, c_in_g, *weight.shape[2:])
    eye = torch.eye(groups, dtype=weight.dtype, device=weight.device)
    dense = torch.einsum("gh,goikl->gohikl", eye, grouped)
    return dense.reshape(c_out, groups * c_in_g, *weight.shape[2:])


class Conv2dOp(WeightedOp):
    """``z = conv(a, W) + b``: any stride, dilation, groups, padding (numbers, 'valid', 'same') and padding mode.

    A grouped convolution is bounded as the dense one with the block-diagonal weight
    (``dense_group_weight``): the same map, at ``groups`` times the bound FLOPs of dedicated
    grouped kernels, so every backend's convolution kernels serve it unchanged. Padding that is not
    symmetric zeros (``padding_mode`` reflect / replicate / circular, or ``'same'`` with an even
    dilated kernel, which pads one side more) is a separate step before an unpadded convolution,
    as PyTorch itself computes it (``pre_pad``; CROWN through it by ``pad_adjoint``).
    """

    @property
    def weight(self) -> torch.Tensor:
        return dense_group_weight(self.module.weight, self.module.groups)

    @property
    def stride(self) -> tuple[int, int]:
        return tuple(self.module.stride)

    @property
    def pre_pad(self) -> Optional[tuple[tuple[int, ...], str]]:
        """``(pad, mode)`` for ``F.pad`` before an unpadded convolution, or None (symmetric zero padding)."""
        m = self.module
        if m.padding_mode != "zeros":
            return tuple(m._reversed_padding_repeated_twice), m.padding_mode
        if m.padding == "same":
            pad = tuple(m._reversed_padding_repeated_twice)
            if any(pad[2 * d] != pad[2 * d + 1] for d in range(len(pad) // 2)):
                return pad, "constant"
        return None

    @property
    def padding(self) -> tuple[int, int]:
        if self.pre_pad is not None:
            return (0, 0)
        return conv_padding(self.module.padding, self.module.weight.shape[-2:], self.module.dilation)

    @property
    def dilation(self) -> tuple[int, int]:
        return tuple(self.module.dilation)

    def _padded_shape(self, in_shape: Shape) -> Shape:
        pre = self.pre_pad
        if pre is None or len(in_shape) != 3:
            return tuple(in_shape)
        pad = pre[0]
        return (in_shape[0], in_shape[1] + pad[2] + pad[3], in_shape[2] + pad[0] + pad[1])

    def out_shape(self, in_shape: Shape) -> Shape:
        if len(in_shape) != 3 or in_shape[0] != self.weight.shape[1]:
            raise ValueError(f"{self.where} expects {self.weight.shape[1]}-channel images but receives shape "
                             f"{in_shape}")
        a = torch.zeros((1,) + tuple(in_shape), dtype=self.weight.dtype, device="meta")
        try:
            if self.pre_pad is not None:
                pad, mode = self.pre_pad
                a = F.pad(a, pad, mode)
            out = F.conv2d(a, self.weight.to("meta"), None, self.stride, self.padding, self.dilation)
        except (RuntimeError, NotImplementedError) as err:
            raise ValueError(f"{self.where} cannot take an input of shape {in_shape}: {err}") from None
        return tuple(out.shape[1:])

    def interval(self, prims, a: Interval) -> Interval:
        lower, upper = a.lower, a.upper
        if self.pre_pad is not None:
            # the pads copy entries (or add zeros), which commutes with a pending ReLU: pad the raw bounds
            pad, mode = self.pre_pad
            lead, in_shape = lower.shape[:2], tuple(lower.shape[2:])
            lower, upper = (F.pad(t.reshape((-1,) + in_shape), pad, mode).unflatten(0, lead) for t in (lower, upper))
        return Interval(*prims.interval_conv2d(lower, upper, self.weight, self.bias, self.stride, self.padding,
                                               self.dilation, a.relu_pending))

    def backward(self, prims, lam, in_shapes, out_shape, pre):
        padded = self._padded_shape(in_shapes[0])
        out_pad = conv_output_padding(self, padded[1:], out_shape[1:])
        lam_in, term = prims.conv2d_backward(lam, self.weight, self.bias, self.stride, self.padding, self.dilation,
                                             out_pad)
        if self.pre_pad is not None:
            lam_in = pad_adjoint(lam_in, in_shapes[0], *self.pre_pad)
        return [lam_in], term

    def fused_args(self, in_shape: Shape, out_shape: Shape):
        """``(weight, bias, conv)`` for ``relu_affine_backward``; ``conv`` = stride, padding, dilation, output padding.

        None when the op pads before convolving: the fused kernels know symmetric zero padding only.
        """
        if self.pre_pad is not None:
            return None
        out_pad = conv_output_padding(self, in_shape[1:], out_shape[1:])
        return self.weight, self.bias, (self.stride, self.padding, self.dilation, out_pad)


class ChannelAffineOp(BoundOp):
    """``z = scale[c] * a + shift[c]``; ``scale``/``shift`` come from the module each call.

    For a BatchNorm in training mode, ``batch_stats`` (set by the clean forward pass of
    the same batch) replaces the running statistics, as the module itself would do.
    """

    kind = "diagonal"

    def __init__(self, module: nn.Module, where: str):
        super().__init__(module, where)
        self.batch_stats: Optional[tuple[torch.Tensor, torch.Tensor]] = None

    def scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.module
        if isinstance(m, Normalize):
            scale = 1.0 / m.std
            return scale, -m.mean * scale
        if self.batch_stats is not None:
            mean, var = self.batch_stats
        else:
            mean, var = m.running_mean, m.running_var
        scale = torch.rsqrt(var + m.eps)
        if m.weight is not None:
            scale = m.weight * scale
        shift = -mean * scale
        if m.bias is not None:
            shift = shift + m.bias
        return scale, shift

    @property
    def uses_batch_stats(self) -> bool:
        """A BatchNorm in training mode normalises with the statistics of the batch it sees."""
        return isinstance(self.module, nn.modules.batchnorm._BatchNorm) and self.module.training

    @property
    def channels(self) -> int:
        m = self.module
        return m.mean.numel() if isinstance(m, Normalize) else m.num_features

    def forward(self, a: torch.Tensor, update_running_stats: bool = True) -> torch.Tensor:
        if not self.uses_batch_stats:
            return self.module(a)
        per_channel = a.numel() // max(a.shape[1], 1)
        if per_channel <= 1:  # as nn.BatchNorm itself refuses, but also where bounds() skips the module
            raise BoundInputError(
                f"{self.name}: BatchNorm in training mode needs more than one value per channel for its batch "
                f"statistics; got input of shape {tuple(a.shape)}. Use a larger batch, or model.eval()")
        # Keep this batch's statistics so the bounds use the very map the clean pass applied.
        dims = [0] + list(range(2, a.dim()))
        self.batch_stats = (a.mean(dims), a.var(dims, unbiased=False))
        if update_running_stats:
            return self.module(a)  # also updates the running averages, as in ordinary training
        scale, shift = self.scale_shift()
        view = (-1,) + (1,) * (a.dim() - 2)
        return a * scale.view(view) + shift.view(view)

    def out_shape(self, in_shape: Shape) -> Shape:
        n_ch = self.channels
        if len(in_shape) < 1 or in_shape[0] != n_ch:
            raise ValueError(f"{self.where} has {n_ch} channels but receives shape {in_shape}")
        if isinstance(self.module, nn.BatchNorm2d) and len(in_shape) != 3:
            raise ValueError(f"{self.where} expects images [C, H, W] but receives shape {in_shape}")
        return in_shape

    def interval(self, prims, a: Interval) -> Interval:
        scale, shift = self.scale_shift()
        return Interval(*prims.interval_channel_affine(a.lower, a.upper, scale, shift, a.relu_pending))

    def backward(self, prims, lam, in_shapes, out_shape, pre):
        lam_in, term = prims.channel_affine_backward(lam, *self.scale_shift())
        return [lam_in], term

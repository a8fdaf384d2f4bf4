"""Turn an ``nn.Sequential`` into the list of bound operations the engine propagates.

Every supported layer becomes one of five operations:

* ``LinearOp``        ``z = W a + b``
* ``Conv2dOp``        ``z = conv(a, W) + b`` (any stride / padding / dilation, groups = 1)
* ``ChannelAffineOp`` ``z = s * a + t`` per channel (``BatchNorm1d/2d`` and ``Normalize``)
* ``ReLUOp``
* ``FlattenOp``

``Identity`` and eval-mode ``Dropout`` are dropped. Anything else is refused with an error
that names the layer type and its position, so a bound is never silently wrong.
The operations read the modules' parameters on every call, so gradients reach them and
optimiser updates are seen without rebuilding anything.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Normalize


class UnsupportedLayerError(TypeError):
    """Raised for a layer the bound engine cannot bound."""


@dataclass
class BoundOp:
    """One step of the network; ``index`` is its position in the flattened Sequential."""

    index: int
    module: nn.Module

    @property
    def name(self) -> str:
        return f"{type(self.module).__name__} at index {self.index}"

    def forward(self, a: torch.Tensor, update_running_stats: bool = True) -> torch.Tensor:
        """The concrete (clean) forward of this step."""
        return self.module(a)


@dataclass
class LinearOp(BoundOp):
    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight

    @property
    def bias(self) -> Optional[torch.Tensor]:
        return self.module.bias


@dataclass
class Conv2dOp(BoundOp):
    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight

    @property
    def bias(self) -> Optional[torch.Tensor]:
        return self.module.bias

    @property
    def stride(self) -> tuple[int, int]:
        return tuple(self.module.stride)

    @property
    def padding(self) -> tuple[int, int]:
        return tuple(self.module.padding)

    @property
    def dilation(self) -> tuple[int, int]:
        return tuple(self.module.dilation)


@dataclass
class ChannelAffineOp(BoundOp):
    """``z = scale[c] * a + shift[c]``; ``scale``/``shift`` come from the module each call.

    For a BatchNorm in training mode, ``batch_stats`` (set by the clean forward pass of
    the same batch) replaces the running statistics, as the module itself would do.
    """

    batch_stats: Optional[tuple[torch.Tensor, torch.Tensor]] = None

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

    def forward(self, a: torch.Tensor, update_running_stats: bool = True) -> torch.Tensor:
        if not self.uses_batch_stats:
            return self.module(a)
        # Keep this batch's statistics so the bounds use the very map the clean pass applied.
        dims = [0] + list(range(2, a.dim()))
        self.batch_stats = (a.mean(dims), a.var(dims, unbiased=False))
        if update_running_stats:
            return self.module(a)  # also updates the running averages, as in ordinary training
        scale, shift = self.scale_shift()
        view = (-1,) + (1,) * (a.dim() - 2)
        return a * scale.view(view) + shift.view(view)


@dataclass
class ReLUOp(BoundOp):
    pass


@dataclass
class FlattenOp(BoundOp):
    def forward(self, a: torch.Tensor, update_running_stats: bool = True) -> torch.Tensor:
        return a.flatten(1)


AffineOp = Union[LinearOp, Conv2dOp, ChannelAffineOp]
AFFINE_TYPES = (LinearOp, Conv2dOp, ChannelAffineOp)


def flatten_modules(model: Union[nn.Module, Iterable[nn.Module]]) -> list[nn.Module]:
    """Flatten nested ``nn.Sequential`` containers into one list of leaf modules."""
    if isinstance(model, nn.Sequential):
        children: Iterable[nn.Module] = model.children()
    elif isinstance(model, (list, tuple)):
        children = model
    else:
        return [model]
    out: list[nn.Module] = []
    for child in children:
        out.extend(flatten_modules(child) if isinstance(child, nn.Sequential) else [child])
    return out


def _convert(index: int, module: nn.Module) -> Optional[BoundOp]:
    where = f"{type(module).__name__} at index {index}"
    if isinstance(module, nn.Linear):
        return LinearOp(index, module)
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise UnsupportedLayerError(f"{where}: grouped convolution (groups={module.groups}) is not supported")
        if module.padding_mode != "zeros":
            raise UnsupportedLayerError(f"{where}: padding_mode={module.padding_mode!r} is not supported (only 'zeros')")
        if isinstance(module.padding, str):
            raise UnsupportedLayerError(f"{where}: string padding {module.padding!r} is not supported; give integers")
        return Conv2dOp(index, module)
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if module.training and not module.track_running_stats:
            raise UnsupportedLayerError(f"{where}: BatchNorm without running statistics is not supported")
        return ChannelAffineOp(index, module)
    if isinstance(module, Normalize):
        return ChannelAffineOp(index, module)
    if isinstance(module, nn.ReLU):
        return ReLUOp(index, module)
    if isinstance(module, nn.Flatten):
        if module.start_dim != 1 or module.end_dim != -1:
            raise UnsupportedLayerError(f"{where}: only Flatten(start_dim=1, end_dim=-1) is supported")
        return FlattenOp(index, module)
    if isinstance(module, nn.Identity):
        return None
    if isinstance(module, nn.Dropout):
        if module.training and module.p > 0:
            raise UnsupportedLayerError(
                f"{where}: Dropout in training mode makes the network random; call model.eval() "
                "or remove it (it is a no-op in eval mode)")
        return None
    raise UnsupportedLayerError(
        f"{where} is not supported; gmbound bounds Sequentials of Linear, Conv2d, ReLU, Flatten, "
        "BatchNorm1d/2d, gmbound.Normalize, Identity and Dropout")


def build_ops(model: Union[nn.Module, Iterable[nn.Module]]) -> list[BoundOp]:
    """Validate ``model`` and convert it into bound operations (no-ops removed)."""
    if not isinstance(model, (nn.Sequential, list, tuple)):
        raise UnsupportedLayerError(
            f"gmbound bounds nn.Sequential models; got {type(model).__name__}. Wrap the layers in nn.Sequential")
    ops = [op for i, m in enumerate(flatten_modules(model)) if (op := _convert(i, m)) is not None]
    if not ops:
        raise UnsupportedLayerError("the model has no layers to bound")
    return ops


def conv_output_padding(op: Conv2dOp, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> tuple[int, int]:
    """``output_padding`` that makes ``conv_transpose2d`` return exactly the conv's input size.

    A strided convolution maps several input sizes to one output size; the transposed
    convolution needs the remainder to recover the one we came from.
    """
    k = op.weight.shape[-2:]
    pads = []
    for d in range(2):
        natural = (out_hw[d] - 1) * op.stride[d] - 2 * op.padding[d] + op.dilation[d] * (k[d] - 1) + 1
        pads.append(in_hw[d] - natural)
    return (pads[0], pads[1])


def infer_shapes(ops: list[BoundOp], in_shape: tuple[int, ...], dtype: torch.dtype,
                 device: torch.device) -> list[tuple[int, ...]]:
    """Per-sample input shape of every op (and the output shape last), from a meta forward."""
    shapes = [tuple(in_shape)]
    a = torch.zeros((1,) + tuple(in_shape), dtype=dtype, device="meta")
    for op in ops:
        if isinstance(op, LinearOp):
            if a.dim() != 2 or a.shape[1] != op.weight.shape[1]:
                raise ValueError(f"{op.name} expects {op.weight.shape[1]} input features but receives shape "
                                 f"{tuple(a.shape[1:])}")
            a = torch.zeros((1, op.weight.shape[0]), dtype=dtype, device="meta")
        elif isinstance(op, Conv2dOp):
            if a.dim() != 4 or a.shape[1] != op.weight.shape[1]:
                raise ValueError(f"{op.name} expects {op.weight.shape[1]}-channel images but receives shape "
                                 f"{tuple(a.shape[1:])}")
            a = F.conv2d(a, op.weight.to("meta"), None, op.stride, op.padding, op.dilation)
        elif isinstance(op, FlattenOp):
            a = a.flatten(1)
        elif isinstance(op, ChannelAffineOp):
            n_ch = op.module.mean.numel() if isinstance(op.module, Normalize) else op.module.num_features
            if a.dim() < 2 or a.shape[1] != n_ch:
                raise ValueError(f"{op.name} has {n_ch} channels but receives shape {tuple(a.shape[1:])}")
        shapes.append(tuple(a.shape[1:]))
    return shapes

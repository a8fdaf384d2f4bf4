"""Turn an ``nn.Sequential`` into the list of bound operations the engine propagates.

Every supported layer becomes one of five operations:

* ``LinearOp``        ``z = W a + b``
* ``Conv2dOp``        ``z = conv(a, W) + b`` (any stride / padding / dilation, groups = 1)
* ``ChannelAffineOp`` ``z = s * a + t`` per channel (``BatchNorm1d/2d`` and ``Normalize``)
* ``ReLUOp``
* ``FlattenOp``

``Identity`` and eval-mode ``Dropout`` are dropped. Anything else is refused with an error
that names the layer type and its position, so a bound is never silently wrong. So is a layer
that only looks supported: a subclass that replaces ``forward``, a layer (or container) with a
forward hook or pre-hook, a layer pruned by ``torch.nn.utils.prune``, or any global forward hook.
The operations read the modules' parameters on every call, so gradients reach them and
optimiser updates are seen without rebuilding anything.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from .layers import Normalize
from .validation import BoundInputError


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
    """Flatten nested ``nn.Sequential`` containers into one list of leaf modules.

    A container is only looked through when it computes what ``nn.Sequential`` computes (no
    ``forward`` of its own, no forward hooks); otherwise ``UnsupportedLayerError`` names it.
    """
    out: list[nn.Module] = []
    _flatten_into(model, "", out)
    return out


def _flatten_into(model: Union[nn.Module, Iterable[nn.Module]], path: str, out: list[nn.Module]) -> None:
    if isinstance(model, nn.Sequential):
        what = f"{type(model).__name__} container " + (f"'{path}'" if path else "(the model itself)")
        if _overridden(model, nn.Sequential, ("forward",)):
            raise UnsupportedLayerError(f"{what} subclasses nn.Sequential with its own forward; gmbound bounds "
                                        "only the plain chain of its layers. Use nn.Sequential itself")
        _check_hooks(model, what)
        children: Iterable[tuple[str, nn.Module]] = model.named_children()
    elif isinstance(model, (list, tuple)):
        children = ((str(i), m) for i, m in enumerate(model))
    else:
        out.append(model)
        return
    for name, child in children:
        child_path = f"{path}.{name}" if path else name
        if isinstance(child, nn.Sequential):
            _flatten_into(child, child_path, out)
        else:
            out.append(child)


# ----------------------------------------------------------------------------- what is understood
# A layer is bounded as the function its base class computes. A subclass may add attributes or
# change its repr, but if it replaces any of these methods it computes something else, and the
# bound would hold for the wrong function.
_CALL_METHODS = ("__call__", "_call_impl", "_wrapped_call_impl")
_FORWARD_METHODS: dict[type, tuple[str, ...]] = {
    nn.Linear: ("forward",),
    nn.Conv2d: ("forward", "_conv_forward"),
    nn.BatchNorm1d: ("forward",),
    nn.BatchNorm2d: ("forward",),
    Normalize: ("forward", "channel_shape"),
    nn.ReLU: ("forward",),
    nn.Flatten: ("forward",),
    nn.Identity: ("forward",),
    nn.Dropout: ("forward",),
}


def _overridden(module: nn.Module, base: type, methods: tuple[str, ...]) -> list[str]:
    """The methods among ``methods`` (and the call machinery) that ``type(module)`` replaces."""
    cls = type(module)
    out = [m for m in methods if getattr(cls, m, None) is not getattr(base, m, None)]
    return out + [m for m in _CALL_METHODS if getattr(cls, m, None) is not getattr(nn.Module, m, None)]


def _hook_names(hooks: dict) -> str:
    return ", ".join(sorted({getattr(h, "__qualname__", type(h).__name__) for h in hooks.values()}))


def _check_hooks(module: nn.Module, where: str) -> None:
    """Forward hooks and pre-hooks can change a layer's input, weights or output: refuse them."""
    pre = getattr(module, "_forward_pre_hooks", {})
    if any(isinstance(h, prune.BasePruningMethod) for h in pre.values()):
        raise UnsupportedLayerError(
            f"{where} is pruned with torch.nn.utils.prune: a forward pre-hook recomputes its weight from "
            "weight_orig * weight_mask, which the bounds would not see. Make the pruning permanent first "
            "(torch.nn.utils.prune.remove(module, 'weight'); the pruned weights stay zero)")
    for kind, hooks in (("forward pre-hook", pre), ("forward hook", getattr(module, "_forward_hooks", {}))):
        if hooks:
            raise UnsupportedLayerError(
                f"{where} has a {kind} ({_hook_names(hooks)}): a hook can change the layer's input, weights or "
                "output, and the bounds would not follow it. Remove the hook (handle.remove()) before bounding; "
                "for reparametrised weights use torch.nn.utils.parametrize, whose weights gmbound reads at call "
                "time")


def check_global_hooks() -> None:
    """Hooks registered for every module (``torch.nn.modules.module.register_module_forward_*hook``)."""
    from torch.nn.modules import module as torch_module

    for kind, name in (("forward pre-hook", "_global_forward_pre_hooks"), ("forward hook", "_global_forward_hooks")):
        hooks = getattr(torch_module, name, None)
        if hooks:
            raise UnsupportedLayerError(
                f"a global {kind} is registered ({_hook_names(hooks)}, by "
                f"torch.nn.modules.module.register_module_{kind.replace(' ', '_').replace('-', '_')}): it runs on "
                "every layer and can change its output, which the bounds would not follow. Remove it "
                "(handle.remove()) before bounding")


def check_understood(index: int, module: nn.Module) -> None:
    """Refuse a supported layer type whose computation is not the base layer's (see ``_FORWARD_METHODS``)."""
    where = f"{type(module).__name__} at index {index}"
    for base, methods in _FORWARD_METHODS.items():
        if isinstance(module, base):
            changed = _overridden(module, base, methods)
            if changed:
                name = f"{'gmbound' if base is Normalize else 'nn'}.{base.__name__}"
                raise UnsupportedLayerError(
                    f"{where} subclasses {name} but replaces {', '.join(changed)}; gmbound can only bound what "
                    f"{name} itself computes. Use {name} (or a subclass that keeps its forward)")
            _check_hooks(module, where)
            return


def _convert(index: int, module: nn.Module) -> Optional[BoundOp]:
    where = f"{type(module).__name__} at index {index}"
    check_understood(index, module)
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
    check_global_hooks()
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


def shape_signature(ops: list[BoundOp]) -> tuple:
    """Everything about ``ops`` that the per-layer shapes depend on (a key for caching them).

    Layers can be replaced, or given new weights, between calls; a cache keyed by this follows.
    """
    sig = []
    for op in ops:
        if isinstance(op, (LinearOp, Conv2dOp)):
            extra = (op.stride, op.padding, op.dilation) if isinstance(op, Conv2dOp) else ()
            sig.append((type(op).__name__, tuple(op.weight.shape)) + extra)
        elif isinstance(op, ChannelAffineOp):
            m = op.module
            sig.append((type(op).__name__, m.mean.numel() if isinstance(m, Normalize) else m.num_features))
        else:
            sig.append((type(op).__name__,))
    return tuple(sig)


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

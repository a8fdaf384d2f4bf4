"""The one registry of what gmbound bounds: module types and graph functions -> bound ops.

``MODULE_RULES`` serves both front ends (a Sequential's layers and a traced graph's leaf
modules); ``FUNCTION_RULES`` / ``METHOD_RULES`` the functions and tensor methods of a traced
graph. ``supported_layers()`` and ``supported_functions()`` are generated from them, so the
list in error messages and docs cannot drift from what is accepted.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import Normalize
from .activation import ReLUOp
from .affine import ChannelAffineOp, Conv2dOp, LinearOp
from .base import BoundOp, UnsupportedLayerError
from .checks import check_understood
from .elementwise import AddOp, ConstantAffineOp
from .pooling import AvgPool2dOp
from .shape import FlattenOp, PadOp, ReshapeOp


# ============================================================================ modules
def _linear(m: nn.Linear, where: str) -> BoundOp:
    return LinearOp(m, where)


def _conv2d(m: nn.Conv2d, where: str) -> BoundOp:
    if m.groups != 1:
        raise UnsupportedLayerError(f"{where}: grouped convolution (groups={m.groups}) is not supported")
    if m.padding_mode != "zeros":
        raise UnsupportedLayerError(f"{where}: padding_mode={m.padding_mode!r} is not supported (only 'zeros')")
    if isinstance(m.padding, str):
        raise UnsupportedLayerError(f"{where}: string padding {m.padding!r} is not supported; give integers")
    return Conv2dOp(m, where)


def _batchnorm(m: nn.Module, where: str) -> BoundOp:
    if m.training and not m.track_running_stats:
        raise UnsupportedLayerError(f"{where}: BatchNorm without running statistics is not supported")
    return ChannelAffineOp(m, where)


def _flatten(m: nn.Flatten, where: str) -> BoundOp:
    if m.start_dim != 1 or m.end_dim != -1:
        raise UnsupportedLayerError(f"{where}: only Flatten(start_dim=1, end_dim=-1) is supported")
    return FlattenOp(m, where)


def _dropout(m: nn.Dropout, where: str) -> None:
    if m.training and m.p > 0:
        raise UnsupportedLayerError(
            f"{where}: Dropout in training mode makes the network random; call model.eval() "
            "or remove it (it is a no-op in eval mode)")
    return None


def _avg_pool(m: nn.AvgPool2d, where: str) -> BoundOp:
    return avg_pool_op(m, where, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad,
                       m.divisor_override)


def avg_pool_op(m, where, kernel, stride, padding, ceil_mode, count_include_pad, divisor) -> BoundOp:
    """``AvgPool2dOp`` after refusing the variants whose windows are not one fixed-weight convolution."""
    if ceil_mode:
        raise UnsupportedLayerError(f"{where}: average pooling with ceil_mode=True is not supported")
    if not count_include_pad:
        raise UnsupportedLayerError(f"{where}: average pooling with count_include_pad=False is not supported")
    return AvgPool2dOp(m, where, kernel, stride, padding, divisor)


def _adaptive_pool(m: nn.AdaptiveAvgPool2d, where: str) -> BoundOp:
    return adaptive_pool_op(m, where, m.output_size)


def adaptive_pool_op(m, where, size) -> BoundOp:
    size = (size, size) if isinstance(size, int) or size is None else tuple(size)
    return AvgPool2dOp(m, where, adaptive=size)


@dataclass(frozen=True)
class ModuleRule:
    """Modules of ``types`` become ``build(module, where)`` (None: dropped as a no-op)."""

    types: tuple[type, ...]
    build: Callable[[Any, str], Optional[BoundOp]]
    label: str


MODULE_RULES: tuple[ModuleRule, ...] = (
    ModuleRule((nn.Linear,), _linear, "Linear"),
    ModuleRule((nn.Conv2d,), _conv2d, "Conv2d (groups=1, zero padding)"),
    ModuleRule((nn.ReLU,), lambda m, w: ReLUOp(m, w), "ReLU"),
    ModuleRule((nn.Flatten,), _flatten, "Flatten"),
    ModuleRule((nn.BatchNorm1d, nn.BatchNorm2d), _batchnorm, "BatchNorm1d/2d"),
    ModuleRule((Normalize,), lambda m, w: ChannelAffineOp(m, w), "gmbound.Normalize"),
    ModuleRule((nn.AvgPool2d,), _avg_pool, "AvgPool2d"),
    ModuleRule((nn.AdaptiveAvgPool2d,), _adaptive_pool, "AdaptiveAvgPool2d (to a size dividing the input)"),
    ModuleRule((nn.Identity,), lambda m, w: None, "Identity"),
    ModuleRule((nn.Dropout,), _dropout, "Dropout (eval mode)"),
)


def module_rule(module: nn.Module) -> Optional[ModuleRule]:
    """The rule for ``module``'s type (subclasses included), or None."""
    for rule in MODULE_RULES:
        if isinstance(module, rule.types):
            return rule
    return None


def build_module_op(module: nn.Module, where: str, front_end: str) -> Optional[BoundOp]:
    """The bound op of a layer (None: a no-op), for either front end; every check of a layer lives here.

    ``front_end``: ``"Sequentials"`` or ``"traced graphs"`` (only for the error message).
    """
    rule = module_rule(module)
    if rule is None:
        raise UnsupportedLayerError(f"{where} is not supported; gmbound bounds {front_end} of "
                                    f"{', '.join(supported_layers())}"
                                    + (f" and the functions {', '.join(supported_functions())}"
                                       if front_end != "Sequentials" else ""))
    check_understood(module, rule.types, where)
    return rule.build(module, where)


def supported_layers() -> tuple[str, ...]:
    """Human-readable names of the supported module types."""
    return tuple(rule.label for rule in MODULE_RULES)


# ============================================================================ graph functions
class TensorArg(int):
    """An argument that is the output of graph node ``int(self)`` (a variable tensor)."""


class BatchSize:
    """The batch size, ``x.size(0)`` / ``x.shape[0]`` of a traced tensor."""


BATCH = BatchSize()


@dataclass(frozen=True)
class ConstArg:
    """A constant tensor of the model (a buffer or parameter), read at every call."""

    get: Callable[[], torch.Tensor]
    name: str


@dataclass
class Call:
    """A call of a traced graph, its arguments resolved (tensors as ``TensorArg``)."""

    label: str
    args: tuple
    kwargs: dict
    where: str

    def arg(self, i: int, name: str, default: Any = None) -> Any:
        if len(self.args) > i:
            return self.args[i]
        return self.kwargs.get(name, default)

    def refuse(self, why: str) -> UnsupportedLayerError:
        return UnsupportedLayerError(f"{self.where}: {why}")


# A function rule returns (op, tensor inputs), or None when the node is the identity of its input.
Built = Optional[tuple[BoundOp, list[int]]]


def _is_tensor(v) -> bool:
    return isinstance(v, TensorArg)


def _constant(v, call: Call) -> Any:
    """A number or a ``ConstArg`` getter; anything else is refused."""
    if isinstance(v, bool) or not isinstance(v, (int, float, ConstArg)):
        raise call.refuse(f"operand {v!r} is neither a traced tensor nor a constant")
    return v.get if isinstance(v, ConstArg) else float(v)


def _negated(c):
    return (lambda: -c()) if callable(c) else -c


def _add(call: Call, sign: float = 1.0) -> Built:
    a, b = call.arg(0, "input"), call.arg(1, "other")
    alpha = call.kwargs.get("alpha", 1)
    if alpha != 1:
        raise call.refuse(f"{call.label} with alpha={alpha} is not supported")
    if _is_tensor(a) and _is_tensor(b):
        return AddOp(None, call.where, sign=sign), [a, b]
    if _is_tensor(a):
        c = _constant(b, call)
        return ConstantAffineOp(None, call.where, shift=c if sign > 0 else _negated(c)), [a]
    if _is_tensor(b):  # c + b or c - b
        return ConstantAffineOp(None, call.where, scale=None if sign > 0 else -1.0, shift=_constant(a, call)), [b]
    raise call.refuse(f"{call.label} of two constants is not a graph operation")


def _mul(call: Call, divide: bool = False) -> Built:
    a, b = call.arg(0, "input"), call.arg(1, "other")
    if _is_tensor(a) and _is_tensor(b):
        raise call.refuse(f"{'division' if divide else 'multiplication'} of two tensors is not supported "
                          "(the product of two variables is not linear; gmbound bounds products by constants)")
    if _is_tensor(a):
        return ConstantAffineOp(None, call.where, scale=_constant(b, call), divide=divide), [a]
    if _is_tensor(b) and not divide:
        return ConstantAffineOp(None, call.where, scale=_constant(a, call)), [b]
    if _is_tensor(b):
        raise call.refuse("division by a tensor is not supported")
    raise call.refuse(f"{call.label} of two constants is not a graph operation")


def _neg(call: Call) -> Built:
    return ConstantAffineOp(None, call.where, scale=-1.0), [call.arg(0, "input")]


def _relu(call: Call) -> Built:
    return ReLUOp(None, call.where), [call.arg(0, "input")]


def _flatten_fn(call: Call, default_start: int) -> Built:
    start, end = call.arg(1, "start_dim", default_start), call.arg(2, "end_dim", -1)
    if start != 1 or end != -1:
        raise call.refuse(f"{call.label}(start_dim={start}, end_dim={end}): only flattening from dim 1 to the end "
                          "is supported (the batch axis stays)")
    return FlattenOp(None, call.where), [call.arg(0, "input")]


def _reshape(call: Call) -> Built:
    shape = list(call.args[1:]) if call.label in ("view", "reshape") else [call.arg(1, "shape")]
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = list(shape[0])
    if not shape or not (shape[0] is BATCH or shape[0] == -1):
        raise call.refuse(f"{call.label}{tuple(shape)}: the first dimension must stay the batch "
                          "(x.size(0), x.shape[0] or -1)")
    rest = shape[1:]
    if shape[0] == -1 and any(s == -1 for s in rest):
        raise call.refuse(f"{call.label}{tuple(shape)}: give the batch as x.size(0) when another dimension is -1")
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in rest):
        raise call.refuse(f"{call.label}{tuple(shape)}: the per-sample shape must be integers (shape arithmetic on "
                          "traced sizes other than the batch is not supported)")
    return ReshapeOp(None, call.where, tuple(rest)), [call.arg(0, "input")]


def _avg_pool_fn(call: Call) -> Built:
    op = avg_pool_op(None, call.where, call.arg(1, "kernel_size"), call.arg(2, "stride"), call.arg(3, "padding", 0),
                     call.arg(4, "ceil_mode", False), call.arg(5, "count_include_pad", True),
                     call.arg(6, "divisor_override"))
    return op, [call.arg(0, "input")]


def _adaptive_pool_fn(call: Call) -> Built:
    return adaptive_pool_op(None, call.where, call.arg(1, "output_size")), [call.arg(0, "input")]


def _identity(call: Call) -> Built:
    return None


def _pad(call: Call) -> Built:
    pad, mode, value = call.arg(1, "pad"), call.arg(2, "mode", "constant"), call.arg(3, "value", None)
    if mode != "constant" or value not in (None, 0, 0.0):
        raise call.refuse(f"padding with mode={mode!r}, value={value!r}: only zero padding is supported")
    if not isinstance(pad, (tuple, list)) or len(pad) % 2 or any(not isinstance(p, int) or p < 0 for p in pad):
        raise call.refuse(f"pad={pad!r}: give non-negative integers, two per padded dimension")
    return PadOp(None, call.where, tuple(pad)), [call.arg(0, "input")]


def _getitem(call: Call) -> Built:
    """``x[:, :, ::s, ::t]`` (a strided subsampling of images: a 1x1 average pooling with that stride)."""
    index = call.arg(1, "index")
    full = slice(None)
    if (isinstance(index, tuple) and len(index) == 4 and index[0] == full and index[1] == full
            and all(isinstance(i, slice) and i.start is None and i.stop is None for i in index[2:])):
        steps = tuple(1 if i.step is None else i.step for i in index[2:])
        if all(isinstance(st, int) and st >= 1 for st in steps):
            return AvgPool2dOp(None, call.where, kernel=1, stride=steps), [call.arg(0, "input")]
    raise call.refuse(f"indexing with {index!r} is not supported (only the strided subsampling x[:, :, ::s, ::t])")


@dataclass(frozen=True)
class FunctionRule:
    build: Callable[[Call], Built]
    label: str


_ADD = FunctionRule(_add, "a + b (residual), a + constant")
_SUB = FunctionRule(lambda c: _add(c, -1.0), "a - b, a - constant")
_MUL = FunctionRule(_mul, "a * constant")
_DIV = FunctionRule(lambda c: _mul(c, divide=True), "a / constant")
_NEG = FunctionRule(_neg, "-a")
_RELU = FunctionRule(_relu, "relu")
_RESHAPE = FunctionRule(_reshape, "view / reshape (batch first)")
FUNCTION_RULES: dict[Any, FunctionRule] = {
    operator.add: _ADD, torch.add: _ADD,
    operator.sub: _SUB, torch.sub: _SUB,
    operator.mul: _MUL, torch.mul: _MUL,
    operator.truediv: _DIV, torch.div: _DIV,
    operator.neg: _NEG, torch.neg: _NEG,
    F.relu: _RELU, torch.relu: _RELU,
    torch.flatten: FunctionRule(lambda c: _flatten_fn(c, 0), "torch.flatten(x, 1)"),
    torch.reshape: _RESHAPE,
    F.avg_pool2d: FunctionRule(_avg_pool_fn, "F.avg_pool2d"),
    F.adaptive_avg_pool2d: FunctionRule(_adaptive_pool_fn, "F.adaptive_avg_pool2d"),
    F.pad: FunctionRule(_pad, "F.pad with zeros"),
    operator.getitem: FunctionRule(_getitem, "x[:, :, ::s, ::t]"),
}
METHOD_RULES: dict[str, FunctionRule] = {
    "add": _ADD, "sub": _SUB, "mul": _MUL, "div": _DIV, "neg": _NEG, "relu": _RELU,
    "flatten": FunctionRule(lambda c: _flatten_fn(c, 0), "x.flatten(1)"),
    "view": _RESHAPE, "reshape": _RESHAPE,
    "contiguous": FunctionRule(_identity, "x.contiguous()"),
}


def supported_functions() -> tuple[str, ...]:
    """Human-readable names of the supported graph functions and methods (besides the modules)."""
    seen: dict[str, None] = {}
    for rule in list(FUNCTION_RULES.values()) + list(METHOD_RULES.values()):
        seen.setdefault(rule.label, None)
    return tuple(seen) + ("x.size(0) / x.shape[0]", "constants (buffers, parameters, numbers)")


def function_rule(kind: str, target: Any) -> Optional[FunctionRule]:
    """The rule of a ``call_function`` target or a ``call_method`` name."""
    if kind == "call_method":
        return METHOD_RULES.get(target)
    try:
        return FUNCTION_RULES.get(target)
    except TypeError:  # an unhashable target
        return None

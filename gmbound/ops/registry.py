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
from .elementwise import AddOp, ConstantAffineOp, ProductOp
from .convex import ELUOp, ExpOp, SoftplusOp
from .nonlinear import AbsOp, ClampOp, LeakyReLUOp, SigmoidOp, SquareOp, TanhOp
from .pooling import AvgPool2dOp, MaxPool2dOp
from .shape import PAD_MODES, FlattenOp, PadOp, ReshapeOp
from .smooth_relu import GELUOp, GELUTanhOp, MishOp, SiLUOp
from .structure import CatOp, ReduceOp, SliceOp


# ============================================================================ modules
def _linear(m: nn.Linear, where: str) -> BoundOp:
    return LinearOp(m, where)


def _conv2d(m: nn.Conv2d, where: str) -> BoundOp:
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
    return AvgPool2dOp(m, where, kernel, stride, padding, divisor, ceil_mode=ceil_mode,
                       count_include_pad=count_include_pad)


def _adaptive_pool(m: nn.AdaptiveAvgPool2d, where: str) -> BoundOp:
    return adaptive_pool_op(m, where, m.output_size)


def adaptive_pool_op(m, where, size) -> BoundOp:
    size = (size, size) if isinstance(size, int) or size is None else tuple(size)
    return AvgPool2dOp(m, where, adaptive=size)


def max_pool_op(m, where, kernel, stride, padding, dilation, ceil_mode, return_indices) -> BoundOp:
    """``MaxPool2dOp`` after refusing what it does not bound."""
    if ceil_mode:
        raise UnsupportedLayerError(f"{where}: max pooling with ceil_mode=True is not supported (its last windows "
                                    "are partial); use ceil_mode=False or pad the input")
    if return_indices:
        raise UnsupportedLayerError(f"{where}: max pooling with return_indices=True returns the argmax, which is "
                                    "not a bounded quantity")
    return MaxPool2dOp(m, where, kernel, stride, padding, dilation)


def _max_pool(m: nn.MaxPool2d, where: str) -> BoundOp:
    return max_pool_op(m, where, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, m.return_indices)


def _gelu(m: nn.GELU, where: str) -> BoundOp:
    return gelu_op(m, where, m.approximate)


def gelu_op(m, where, approximate) -> BoundOp:
    if approximate == "none":
        return GELUOp(m, where)
    if approximate == "tanh":
        return GELUTanhOp(m, where)
    raise UnsupportedLayerError(f"{where}: GELU with approximate={approximate!r}: PyTorch knows 'none' and 'tanh'")


@dataclass(frozen=True)
class ModuleRule:
    """Modules of ``types`` become ``build(module, where)`` (None: dropped as a no-op); ``op``: the bound op class(es)."""

    types: tuple[type, ...]
    build: Callable[[Any, str], Optional[BoundOp]]
    label: str
    op: Any = None  # the bound op class it builds, or a tuple of them (for the table of supported operations)


MODULE_RULES: tuple[ModuleRule, ...] = (
    ModuleRule((nn.Linear,), _linear, "Linear", LinearOp),
    ModuleRule((nn.Conv2d,), _conv2d, "Conv2d (grouped: as dense)", Conv2dOp),
    ModuleRule((nn.ReLU,), lambda m, w: ReLUOp(m, w), "ReLU", ReLUOp),
    ModuleRule((nn.Flatten,), _flatten, "Flatten", FlattenOp),
    ModuleRule((nn.BatchNorm1d, nn.BatchNorm2d), _batchnorm, "BatchNorm1d/2d", ChannelAffineOp),
    ModuleRule((Normalize,), lambda m, w: ChannelAffineOp(m, w), "gmbound.Normalize", ChannelAffineOp),
    ModuleRule((nn.AvgPool2d,), _avg_pool, "AvgPool2d", AvgPool2dOp),
    ModuleRule((nn.AdaptiveAvgPool2d,), _adaptive_pool, "AdaptiveAvgPool2d", AvgPool2dOp),
    ModuleRule((nn.Identity,), lambda m, w: None, "Identity"),
    ModuleRule((nn.Dropout,), _dropout, "Dropout (eval mode)"),
    ModuleRule((nn.Tanh,), lambda m, w: TanhOp(m, w), "Tanh", TanhOp),
    ModuleRule((nn.Sigmoid,), lambda m, w: SigmoidOp(m, w), "Sigmoid", SigmoidOp),
    ModuleRule((nn.LeakyReLU,), lambda m, w: LeakyReLUOp(m, w, m.negative_slope), "LeakyReLU", LeakyReLUOp),
    ModuleRule((nn.Hardtanh,), lambda m, w: ClampOp(m, w, m.min_val, m.max_val), "Hardtanh, ReLU6", ClampOp),
    ModuleRule((nn.GELU,), _gelu, "GELU", (GELUOp, GELUTanhOp)),
    ModuleRule((nn.SiLU,), lambda m, w: SiLUOp(m, w), "SiLU", SiLUOp),
    ModuleRule((nn.Mish,), lambda m, w: MishOp(m, w), "Mish", MishOp),
    ModuleRule((nn.Softplus,), lambda m, w: SoftplusOp(m, w, m.beta, m.threshold), "Softplus", SoftplusOp),
    ModuleRule((nn.ELU,), lambda m, w: ELUOp(m, w, m.alpha), "ELU (0 <= alpha <= 1)", ELUOp),
    ModuleRule((nn.CELU,), lambda m, w: ELUOp(m, w, m.alpha, continuous=True), "CELU", ELUOp),
    ModuleRule((nn.MaxPool2d,), _max_pool, "MaxPool2d (ceil_mode=False)", MaxPool2dOp),
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
    if _is_tensor(a) and _is_tensor(b) and not divide:
        if int(a) == int(b):  # x * x: a square, tighter than the product of two independent factors
            return SquareOp(None, call.where), [a]
        return ProductOp(None, call.where), [a, b]
    if _is_tensor(a) and _is_tensor(b):
        raise call.refuse("division of two tensors is not supported (1/b has no relaxation in gmbound; a product "
                          "a * b of two tensors is)")
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
    if mode not in PAD_MODES:
        raise call.refuse(f"padding with mode={mode!r}: gmbound bounds the modes {', '.join(PAD_MODES)}")
    if value is not None and (mode != "constant" or _is_tensor(value) or isinstance(value, bool)
                              or not isinstance(value, (int, float))):
        raise call.refuse(f"padding with mode={mode!r}, value={value!r}: give a number, with mode='constant'")
    if not isinstance(pad, (tuple, list)) or len(pad) % 2 or any(not isinstance(p, int) or p < 0 for p in pad):
        raise call.refuse(f"pad={pad!r}: give non-negative integers, two per padded dimension")
    return PadOp(None, call.where, tuple(pad), mode, float(value or 0.0)), [call.arg(0, "input")]


def _is_int(v) -> bool:
    """A plain integer (not a bool, and not a traced tensor: ``TensorArg`` subclasses int)."""
    return isinstance(v, int) and not isinstance(v, (bool, TensorArg))


def _getitem(call: Call) -> Built:
    """Basic indexing that keeps the batch: ``x[:, a:b]``, ``x[:, :, ::s, ::t]``, ``x[..., 1:]``, ``x[:, 3]``."""
    index = call.arg(1, "index")
    why = ("gmbound bounds basic indexing that keeps the batch axis: x[:, a:b], x[:, :, ::s], x[..., i], "
           "x[:, i] (slices with positive steps and integers; no tensors, lists or None)")
    entries = index if isinstance(index, tuple) else (index,)
    if Ellipsis in entries:
        raise call.refuse(f"indexing with {index!r}: an Ellipsis needs the tensor's rank, which the trace does not "
                          f"know; write the dimensions out. {why}")
    if not entries or entries[0] != slice(None):
        raise call.refuse(f"indexing with {index!r} indexes the batch axis. {why}")
    rest = entries[1:]
    for i in rest:
        if not (_is_int(i) or isinstance(i, slice)):
            raise call.refuse(f"indexing with {index!r}: {i!r} is not a slice or an integer. {why}")
        if isinstance(i, slice) and not all(v is None or _is_int(v)
                                            for v in (i.start, i.stop, i.step)):
            raise call.refuse(f"indexing with {index!r}: slice bounds must be integers. {why}")
        if isinstance(i, slice) and i.step is not None and i.step < 1:
            raise call.refuse(f"indexing with {index!r}: steps must be positive. {why}")
    return SliceOp(None, call.where, rest), [call.arg(0, "input")]


def _narrow(call: Call) -> Built:
    dim, start, length = call.arg(1, "dim"), call.arg(2, "start"), call.arg(3, "length")
    if not all(_is_int(v) for v in (dim, start, length)) or length < 0:
        raise call.refuse(f"narrow(dim={dim!r}, start={start!r}, length={length!r}): give integers")
    if dim == 0:
        raise call.refuse("narrow along the batch axis (dim 0) is not supported: the batch axis must stay")
    if dim < 0 or start < 0:
        raise call.refuse("narrow with a negative dim or start needs the tensor's rank; give non-negative values")
    index = (slice(None),) * (dim - 1) + (slice(start, start + length),)
    return SliceOp(None, call.where, index), [call.arg(0, "input")]


def _cat(call: Call) -> Built:
    tensors, dim = call.arg(0, "tensors"), call.arg(1, "dim", 0)
    if not isinstance(tensors, (tuple, list)) or not tensors or not all(_is_tensor(t) for t in tensors):
        raise call.refuse(f"{call.label} of {tensors!r}: every operand must be a traced tensor (concatenating a "
                          "constant is not supported)")
    if not _is_int(dim) or dim == 0:
        raise call.refuse(f"{call.label} along dim={dim!r}: give a per-sample dimension (not the batch axis 0)")
    return CatOp(None, call.where, dim, len(tensors)), list(tensors)


def _reduce(call: Call, mean: bool) -> Built:
    dim = call.arg(1, "dim", None)
    keepdim = call.arg(2, "keepdim", False)
    if call.kwargs.get("dtype") is not None:
        raise call.refuse(f"{call.label} with dtype= is not supported")
    if dim is None:
        raise call.refuse(f"{call.label} over all dimensions reduces the batch axis too; give the per-sample "
                          "dimensions (e.g. x.mean(dim=(1, 2)))")
    dims = tuple(dim) if isinstance(dim, (tuple, list)) else (dim,)
    if not dims or not all(_is_int(d) for d in dims):
        raise call.refuse(f"{call.label}(dim={dim!r}): give integer dimensions")
    if 0 in dims:
        raise call.refuse(f"{call.label} over dim 0 reduces the batch axis; gmbound bounds each sample on its own")
    return ReduceOp(None, call.where, dims, bool(keepdim), mean), [call.arg(0, "input")]


def _unary(op_cls):
    """A rule for a one-input element-wise op without settings (``torch.tanh(x)``, ``x.abs()``, ...)."""
    def build(call: Call) -> Built:
        return op_cls(None, call.where), [call.arg(0, "input")]
    return build


def _pow(call: Call) -> Built:
    base, exponent = call.arg(0, "input"), call.arg(1, "exponent")
    if not _is_tensor(base) or _is_tensor(exponent) or exponent not in (1, 2):
        raise call.refuse(f"{call.label} with exponent {exponent!r}: gmbound bounds x ** 2 (and x ** 1) of a traced "
                          "tensor")
    if exponent == 1:
        return None
    return SquareOp(None, call.where, midpoint=True), [base]


def _leaky_relu_fn(call: Call) -> Built:
    slope = call.arg(1, "negative_slope", 0.01)
    if _is_tensor(slope) or isinstance(slope, bool) or not isinstance(slope, (int, float)):
        raise call.refuse(f"leaky_relu with negative_slope={slope!r}: give a number")
    return LeakyReLUOp(None, call.where, float(slope)), [call.arg(0, "input")]


def _clamp_value(v, call: Call, name: str):
    if v is None:
        return None
    if _is_tensor(v) or isinstance(v, bool) or not isinstance(v, (int, float)):
        raise call.refuse(f"{call.label} with {name}={v!r}: gmbound bounds clamps by numbers (not tensors)")
    return float(v)


def _clamp_fn(call: Call) -> Built:
    label = call.label.rstrip("_")
    if label == "clamp_min":
        lo, hi = call.arg(1, "min"), None
    elif label == "clamp_max":
        lo, hi = None, call.arg(1, "max")
    else:
        lo, hi = call.arg(1, "min"), call.arg(2, "max")
    lo, hi = _clamp_value(lo, call, "min"), _clamp_value(hi, call, "max")
    if lo is None and hi is None:
        raise call.refuse(f"{call.label} without min or max")
    if lo is not None and hi is not None and lo > hi:
        raise call.refuse(f"{call.label} with min {lo} > max {hi}")
    return ClampOp(None, call.where, lo, hi), [call.arg(0, "input")]


def _hardtanh_fn(call: Call) -> Built:
    lo, hi = call.arg(1, "min_val", -1.0), call.arg(2, "max_val", 1.0)
    lo, hi = _clamp_value(lo, call, "min_val"), _clamp_value(hi, call, "max_val")
    return ClampOp(None, call.where, lo, hi), [call.arg(0, "input")]


def _relu6_fn(call: Call) -> Built:
    return ClampOp(None, call.where, 0.0, 6.0), [call.arg(0, "input")]


def _gelu_fn(call: Call) -> Built:
    return gelu_op(None, call.where, call.arg(1, "approximate", "none")), [call.arg(0, "input")]


def _number(call: Call, index: int, name: str, default: float) -> float:
    v = call.arg(index, name, default)
    if _is_tensor(v) or isinstance(v, bool) or not isinstance(v, (int, float)):
        raise call.refuse(f"{call.label} with {name}={v!r}: give a number")
    return float(v)


def _softplus_fn(call: Call) -> Built:
    op = SoftplusOp(None, call.where, _number(call, 1, "beta", 1.0), _number(call, 2, "threshold", 20.0))
    return op, [call.arg(0, "input")]


def _elu_fn(call: Call, continuous: bool) -> Built:
    return ELUOp(None, call.where, _number(call, 1, "alpha", 1.0), continuous), [call.arg(0, "input")]


def _max_pool_fn(call: Call) -> Built:
    op = max_pool_op(None, call.where, call.arg(1, "kernel_size"), call.arg(2, "stride"), call.arg(3, "padding", 0),
                     call.arg(4, "dilation", 1), call.arg(5, "ceil_mode", False), call.arg(6, "return_indices", False))
    return op, [call.arg(0, "input")]


@dataclass(frozen=True)
class FunctionRule:
    build: Callable[[Call], Built]
    label: str
    op: Any = None  # the bound op class it builds, or a tuple of them (for the table of supported operations)


_ADD = FunctionRule(_add, "a + b (residual), a + constant", (AddOp, ConstantAffineOp))
_SUB = FunctionRule(lambda c: _add(c, -1.0), "a - b, a - constant", (AddOp, ConstantAffineOp))
_MUL = FunctionRule(_mul, "a * b (x * x: a square), a * constant", (ProductOp, SquareOp, ConstantAffineOp))
_SQUARE = FunctionRule(lambda c: (SquareOp(None, c.where, midpoint=True), [c.arg(0, "input")]), "square",
                       SquareOp)
_POW = FunctionRule(_pow, "x ** 2", SquareOp)
_DIV = FunctionRule(lambda c: _mul(c, divide=True), "a / constant", ConstantAffineOp)
_NEG = FunctionRule(_neg, "-a", ConstantAffineOp)
_RELU = FunctionRule(_relu, "relu", ReLUOp)
_RESHAPE = FunctionRule(_reshape, "view / reshape (batch first)", ReshapeOp)
_TANH = FunctionRule(_unary(TanhOp), "tanh", TanhOp)
_SIGMOID = FunctionRule(_unary(SigmoidOp), "sigmoid", SigmoidOp)
_ABS = FunctionRule(_unary(AbsOp), "abs", AbsOp)
_EXP = FunctionRule(_unary(ExpOp), "exp", ExpOp)
_CLAMP = FunctionRule(_clamp_fn, "clamp / clip / clamp_min / clamp_max (by numbers)", ClampOp)
_HARDTANH = FunctionRule(_hardtanh_fn, "F.hardtanh", ClampOp)
_LEAKY = FunctionRule(_leaky_relu_fn, "F.leaky_relu", LeakyReLUOp)
_MAXPOOL = FunctionRule(_max_pool_fn, "F.max_pool2d", MaxPool2dOp)
_ELU = FunctionRule(lambda c: _elu_fn(c, continuous=False), "F.elu (0 <= alpha <= 1)", ELUOp)
_CELU = FunctionRule(lambda c: _elu_fn(c, continuous=True), "F.celu / torch.celu", ELUOp)
_CAT = FunctionRule(_cat, "torch.cat / torch.concat (per-sample dim)", CatOp)
_SUM = FunctionRule(lambda c: _reduce(c, mean=False), "sum over per-sample dims", ReduceOp)
_MEAN = FunctionRule(lambda c: _reduce(c, mean=True), "mean over per-sample dims", ReduceOp)
_INDEX = FunctionRule(_getitem, "x[:, a:b], x[:, :, ::s, ::t], x[:, i] (basic indexing)", SliceOp)
_NARROW = FunctionRule(_narrow, "narrow (per-sample dim)", SliceOp)
FUNCTION_RULES: dict[Any, FunctionRule] = {
    operator.add: _ADD, torch.add: _ADD,
    operator.sub: _SUB, torch.sub: _SUB,
    operator.mul: _MUL, torch.mul: _MUL,
    operator.truediv: _DIV, torch.div: _DIV,
    operator.neg: _NEG, torch.neg: _NEG,
    F.relu: _RELU, torch.relu: _RELU, F.relu_: _RELU, torch.relu_: _RELU,
    torch.flatten: FunctionRule(lambda c: _flatten_fn(c, 0), "torch.flatten(x, 1)", FlattenOp),
    torch.reshape: _RESHAPE,
    F.avg_pool2d: FunctionRule(_avg_pool_fn, "F.avg_pool2d", AvgPool2dOp),
    F.adaptive_avg_pool2d: FunctionRule(_adaptive_pool_fn, "F.adaptive_avg_pool2d", AvgPool2dOp),
    F.pad: FunctionRule(_pad, "F.pad (constant, reflect, replicate, circular)", PadOp),
    operator.getitem: _INDEX, torch.narrow: _NARROW,
    torch.tanh: _TANH, torch.tanh_: _TANH, torch.sigmoid: _SIGMOID, torch.sigmoid_: _SIGMOID,
    torch.abs: _ABS, torch.abs_: _ABS, operator.abs: _ABS, torch.exp: _EXP, torch.exp_: _EXP,
    torch.clamp: _CLAMP, torch.clamp_: _CLAMP, torch.clip: _CLAMP, torch.clamp_min: _CLAMP,
    torch.clamp_max: _CLAMP,
    F.hardtanh: _HARDTANH, F.hardtanh_: _HARDTANH, F.relu6: FunctionRule(_relu6_fn, "F.relu6", ClampOp),
    F.leaky_relu: _LEAKY, F.leaky_relu_: _LEAKY,
    F.gelu: FunctionRule(_gelu_fn, "F.gelu", (GELUOp, GELUTanhOp)),
    F.silu: FunctionRule(_unary(SiLUOp), "F.silu", SiLUOp), F.mish: FunctionRule(_unary(MishOp), "F.mish", MishOp),
    F.max_pool2d: _MAXPOOL,
    F.softplus: FunctionRule(_softplus_fn, "F.softplus", SoftplusOp),
    F.elu: _ELU, F.elu_: _ELU, F.celu: _CELU, F.celu_: _CELU, torch.celu: _CELU, torch.celu_: _CELU,
    torch.cat: _CAT, torch.concat: _CAT,
    torch.square: _SQUARE, operator.pow: _POW, torch.pow: _POW,
    torch.sum: _SUM, torch.mean: _MEAN,
}
METHOD_RULES: dict[str, FunctionRule] = {
    "add": _ADD, "sub": _SUB, "mul": _MUL, "div": _DIV, "neg": _NEG, "relu": _RELU,
    "flatten": FunctionRule(lambda c: _flatten_fn(c, 0), "x.flatten(1)", FlattenOp),
    "view": _RESHAPE, "reshape": _RESHAPE,
    "contiguous": FunctionRule(_identity, "x.contiguous()"),
    "tanh": _TANH, "sigmoid": _SIGMOID, "abs": _ABS, "exp": _EXP, "square": _SQUARE, "pow": _POW,
    "clamp": _CLAMP, "clip": _CLAMP, "clamp_min": _CLAMP, "clamp_max": _CLAMP,
    "sum": _SUM, "mean": _MEAN, "narrow": _NARROW,
}
# In-place forms (``x.relu_()``, ``x.add_(y)``, ...) are bounded as their functional forms when no
# other node reads the tensor they overwrite (``gmbound.tracing`` checks that).
INPLACE_METHODS = tuple(name + "_" for name in ("add", "sub", "mul", "div", "neg", "relu", "tanh", "sigmoid", "abs",
                                                "exp", "clamp", "clip", "clamp_min", "clamp_max", "square", "pow"))


# What is refused, and why: the README's table of operations lists these (generated, see ``gmbound.ops.table``).
REFUSED: tuple[tuple[str, str], ...] = (
    ("a / b of two tensors", "1/b has no relaxation in gmbound (a * b has: McCormick)"),
    ("softmax, log_softmax, SELU, sin / cos, log, sqrt, x ** p (p not 1 or 2)",
     "no relaxation implemented; a product a * b, tanh, sigmoid, exp, softplus, ELU, SiLU, Mish are"),
    ("ELU with alpha > 1 or < 0", "not convex: its slope falls at 0 (CELU is convex for every alpha > 0)"),
    ("max pooling with ceil_mode=True or return_indices=True", "partial last windows; indices are not bounded "
     "values"),
    ("reductions, indexing or concatenation along the batch axis (x.sum(), x[0], torch.cat(..., 0))",
     "each sample is bounded on its own box; the batch axis must stay"),
    ("indexing with tensors, lists, None or Ellipsis; negative steps", "not a basic per-sample selection (an "
     "Ellipsis needs the rank, unknown to the trace)"),
    ("clamp / hardtanh by tensors, concatenation with constants, sums of tensors of different shapes",
     "bounds are per entry of one shape; broadcasting between variable tensors is not supported"),
    ("an in-place op on a tensor that other nodes also read", "the trace cannot follow the mutation"),
    ("data-dependent control flow (if / loops on values)", "cannot be traced as one graph"),
)


def supported_functions() -> tuple[str, ...]:
    """Human-readable names of the supported graph functions and methods (besides the modules)."""
    seen: dict[str, None] = {}
    for rule in list(FUNCTION_RULES.values()) + list(METHOD_RULES.values()):
        seen.setdefault(rule.label, None)
    return tuple(seen) + ("x.size(0) / x.shape[0]", "constants (buffers, parameters, numbers)")


def is_inplace(kind: str, target: Any) -> bool:
    """Whether a call overwrites its first argument (``x.relu_()``, ``torch.relu_(x)``, ``F.leaky_relu_``)."""
    if kind == "call_method":
        return target in INPLACE_METHODS
    name = getattr(target, "__name__", "")
    return isinstance(name, str) and name.endswith("_") and not name.startswith("_")


def function_rule(kind: str, target: Any) -> Optional[FunctionRule]:
    """The rule of a ``call_function`` target or a ``call_method`` name (an in-place method: its functional form's)."""
    if kind == "call_method":
        if target in INPLACE_METHODS:
            return METHOD_RULES.get(target[:-1])
        return METHOD_RULES.get(target)
    try:
        return FUNCTION_RULES.get(target)
    except TypeError:  # an unhashable target
        return None

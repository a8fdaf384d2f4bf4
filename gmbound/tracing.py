"""The graph front end: any ``nn.Module`` traced with torch.fx into a bound graph.

``torch.fx.symbolic_trace``'s tracer records the model's ``forward`` once with symbolic
tensors; modules the registry knows stay single nodes (leaves), everything else is traced
through. Each node of the trace is then looked up in the registry (``gmbound.ops.registry``);
a node it does not know (a division by a tensor, softmax, data-dependent indexing, ...) is refused
with an error naming the node, its op and the source line that created it. Data-dependent
control flow cannot be traced at all; that error names the line too.
"""
from __future__ import annotations

import linecache
import operator
import os
import sys
from typing import Any, Optional

import torch
import torch.fx as fx
from torch import nn

from .graph import BoundGraph, Node
from .ops.base import UnsupportedLayerError
from .ops.checks import check_global_hooks, check_hooks
from .ops.registry import (BATCH, Call, ConstArg, TensorArg, build_module_op, function_rule, is_inplace,
                           module_rule, supported_functions, supported_layers)

_TORCH_DIR = os.path.dirname(torch.__file__)


class _Shape:
    """``x.shape`` / ``x.size()`` of a traced tensor: only its batch entry can be used."""


_SHAPE = _Shape()


def _same_forward(module: nn.Module, types: tuple[type, ...]) -> bool:
    """Whether ``module`` computes what its registered base type computes (no ``forward`` of its own)."""
    fwd = type(module).forward
    return any(isinstance(module, t) and fwd is t.forward for t in types)


class BoundTracer(fx.Tracer):
    """torch.fx's tracer, recording source lines; modules the registry knows are leaves.

    A subclass of a known layer that replaces ``forward`` is traced through instead, so what is
    bounded is what it computes.
    """

    def create_node(self, *args, **kwargs) -> fx.Node:
        # The user's source line, found by walking the Python frames: cheap. (fx's own
        # record_stack_traces symbolizes native frames too, which took seconds on a first call.)
        node = super().create_node(*args, **kwargs)
        frame = sys._getframe(1)
        while frame is not None and _internal(frame.f_code.co_filename):
            frame = frame.f_back
        if frame is not None:
            code = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
            node.meta["gmbound_source"] = f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}: {code}"
        return node

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        rule = module_rule(m)
        if rule is not None:
            return _same_forward(m, rule.types)
        return super().is_leaf_module(m, module_qualified_name)


def _internal(file: str) -> bool:
    """A frame of torch or of code it generated (fx's exec'd wrappers): not the model's own code."""
    return file.startswith(_TORCH_DIR) or file.startswith("<")


def _user_frame(frames: list[tuple[str, int, str]]) -> str:
    """``file:line: code`` of the innermost frame outside torch (the model's own code)."""
    for file, line, code in reversed(frames):
        if not _internal(file):
            return f"{os.path.basename(file)}:{line}: {code.strip()}"
    return ""


def _node_location(node: fx.Node) -> str:
    return node.meta.get("gmbound_source", "")


def _target_name(node: fx.Node, model: nn.Module) -> str:
    """``conv1 = Conv2d``, ``Tensor.view``, ``torch.cat``, ``operator.mul``, ``torch.nn.functional.relu``."""
    t = node.target
    if node.op == "call_module":
        return f"{t} = {type(model.get_submodule(t)).__name__}"
    if node.op == "call_method":
        return f"Tensor.{t}"
    mod = getattr(t, "__module__", None) or "torch"
    if mod.startswith("torch._C"):
        mod = "torch"
    elif mod == "_operator":
        mod = "operator"
    return f"{mod}.{getattr(t, '__name__', repr(t))}"


def describe(node: fx.Node, model: nn.Module) -> str:
    """``node 'name' (op target) at file:line: code`` for error messages."""
    where = f"node '{node.name}' ({node.op} {_target_name(node, model)})"
    loc = _node_location(node)
    return f"{where} at {loc}" if loc else where


def trace(model: nn.Module) -> fx.Graph:
    """The fx graph of ``model.forward``; an error naming the line when it cannot be traced."""
    try:
        graph = BoundTracer().trace(model)
    except Exception as err:  # noqa: BLE001 - any failure of the trace is reported with its line
        import traceback

        frames = [(f.filename, f.lineno, f.line or "") for f in traceback.extract_tb(err.__traceback__)]
        loc = _user_frame(frames)
        hint = ""
        if isinstance(err, fx.proxy.TraceError) or "control flow" in str(err):
            hint = (" The forward takes a branch (or loop) that depends on the input's values: data-dependent "
                    "control flow cannot be bounded as one graph.")
        raise UnsupportedLayerError(
            f"torch.fx cannot trace {type(model).__name__}.forward{f' at {loc}' if loc else ''}: "
            f"{type(err).__name__}: {err}.{hint}") from None
    return graph


def _check_hooks(model: nn.Module) -> None:
    """Hooks are invisible to the trace (and to the bounds): refuse them wherever they are."""
    check_global_hooks()
    for name, m in model.named_modules():
        check_hooks(m, f"module '{name}' ({type(m).__name__})" if name else f"the model ({type(m).__name__})")


def _getter(model: nn.Module, target: str):
    """Read ``model.<target>`` at call time (a buffer or parameter; optimiser updates are seen)."""
    path = target.split(".")

    def get() -> torch.Tensor:
        obj: Any = model
        for p in path:
            obj = getattr(obj, p)
        return obj

    return get


def convert(graph: fx.Graph, model: nn.Module) -> BoundGraph:
    """The bound graph of a traced ``model`` (every node looked up in the registry; checks run now)."""
    _check_hooks(model)
    nodes: list[Node] = [Node(None)]
    value: dict[fx.Node, Any] = {}
    output: Optional[int] = None

    def resolve(a: Any) -> Any:
        return fx.node.map_arg(a, lambda n: value[n])

    for n in graph.nodes:
        where = describe(n, model)
        if n.op == "placeholder":
            if any(isinstance(v, TensorArg) and int(v) == 0 for v in value.values()) or nodes[1:]:
                raise UnsupportedLayerError(f"{where}: gmbound bounds models with one tensor input; "
                                            f"{type(model).__name__}.forward takes more")
            value[n] = TensorArg(0)
            continue
        if n.op == "get_attr":
            value[n] = ConstArg(_getter(model, n.target), n.target)
            continue
        if n.op == "output":
            out = resolve(n.args[0])
            if not isinstance(out, TensorArg) or int(out) == 0:
                raise UnsupportedLayerError(f"{where}: the model must return one tensor computed from its input, "
                                            f"got {out!r}")
            output = int(out)
            continue
        args, kwargs = resolve(n.args), resolve(n.kwargs)
        shape_value = _shape_node(n, args, where)
        if shape_value is not None:
            value[n] = shape_value
            continue
        if n.op == "call_module":
            module = model.get_submodule(n.target)
            op = build_module_op(module, where, "traced graphs")
            if len(args) != 1 or kwargs or not isinstance(args[0], TensorArg):
                raise UnsupportedLayerError(f"{where}: a layer must take one traced tensor, got {args!r} {kwargs!r}")
            if getattr(module, "inplace", False):
                _check_inplace(n, where)
            inputs = [args[0]]
        else:
            rule = function_rule(n.op, n.target)
            if rule is None:
                raise UnsupportedLayerError(f"{where} is not supported; gmbound bounds {', '.join(supported_functions())}"
                                            f" and the layers {', '.join(supported_layers())}")
            if kwargs.get("inplace") or is_inplace(n.op, n.target):
                _check_inplace(n, where)
            built = rule.build(Call(str(getattr(n.target, "__name__", n.target)), tuple(args), dict(kwargs), where))
            op, inputs = (None, [args[0]]) if built is None else built
        for t in inputs:
            if not isinstance(t, TensorArg):
                raise UnsupportedLayerError(f"{where}: expected a traced tensor, got {t!r}")
        if op is None:  # the identity of its input
            value[n] = inputs[0]
            continue
        nodes.append(Node(op, tuple(int(t) for t in inputs)))
        value[n] = TensorArg(len(nodes) - 1)
    if output is None:
        raise UnsupportedLayerError(f"{type(model).__name__}: the traced graph has no output")
    return _pruned(BoundGraph(nodes, output))


def _pruned(graph: BoundGraph) -> BoundGraph:
    """Without the nodes the output does not depend on (dead code of the forward)."""
    keep = sorted(graph.ancestors([graph.output]) | {0})
    if len(keep) == len(graph.nodes):
        return graph
    new = {old: i for i, old in enumerate(keep)}
    nodes = [Node(graph.nodes[i].op, tuple(new[j] for j in graph.nodes[i].inputs)) for i in keep]
    return BoundGraph(nodes, new[graph.output])


def _shape_node(n: fx.Node, args: tuple, where: str) -> Any:
    """``x.size(0)``, ``x.shape``, ``x.shape[0]``, ``x.size()``: the batch size (or a shape to index); else None."""
    if n.op == "call_method" and n.target == "size" and args and isinstance(args[0], TensorArg):
        dim = args[1] if len(args) > 1 else n.kwargs.get("dim")
        if dim is None:
            return _SHAPE
        if dim == 0:
            return BATCH
        raise UnsupportedLayerError(f"{where}: only the batch size x.size(0) of a traced tensor can be "
                                    "used (other sizes would make the graph depend on shapes gmbound does not track)")
    if n.op == "call_function" and n.target is getattr and len(args) == 2 and isinstance(args[0], TensorArg):
        if args[1] == "shape":
            return _SHAPE
    if n.op == "call_function" and args and args[0] is _SHAPE:
        if n.target is operator.getitem and args[1] == 0:
            return BATCH
        raise UnsupportedLayerError(f"{where}: only the batch entry x.shape[0] of a traced shape can be "
                                    "used")
    return None


def _check_inplace(n: fx.Node, where: str) -> None:
    """An in-place op rewrites its input; the graph (and the bounds) would not see that if others read it."""
    src = n.args[0]
    if isinstance(src, fx.Node) and len(src.users) > 1:
        raise UnsupportedLayerError(f"{where}: an in-place operation on a tensor that other nodes also read; the "
                                    "trace cannot follow the mutation. Use the out-of-place form (inplace=False, "
                                    "x.relu() instead of x.relu_(), y = y + z instead of y.add_(z))")


def _fingerprint(model: nn.Module) -> tuple:
    return (type(model).forward,) + tuple((name, id(m)) for name, m in model.named_modules())


def graph_of(model: nn.Module, cache: Optional[dict] = None) -> BoundGraph:
    """The bound graph of ``model``; ``cache`` keeps the trace while the model's modules stay the same."""
    key = _fingerprint(model)
    if cache is not None and cache.get("key") == key:
        graph = cache["graph"]
    else:
        graph = trace(model)
        if cache is not None:
            cache.clear()
            cache.update(key=key, graph=graph)
    return convert(graph, model)

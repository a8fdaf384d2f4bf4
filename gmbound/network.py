"""From a model to its bound graph: the Sequential front end, and the choice of front end.

* An ``nn.Sequential`` (nested ones flattened) becomes a chain: each layer is looked up in the
  registry (``gmbound.ops.registry``); ``Identity`` and eval-mode ``Dropout`` are dropped.
  Errors name the layer type and its index.
* Any other ``nn.Module`` is traced with torch.fx (``gmbound.tracing``); errors name the node,
  its op and its source line.

Anything the registry does not know is refused, so a bound is never silently wrong; so is a
layer that only looks supported (``gmbound.ops.checks``: a subclass replacing ``forward``, a
hook, pruning, a global hook). The ops read the modules' parameters on every call, so gradients
reach them and optimiser updates are seen without rebuilding anything.
"""
from __future__ import annotations

from typing import Iterable, Optional, Union

import torch
from torch import nn

from .graph import BoundGraph
from .ops import (BoundOp, ChannelAffineOp, Conv2dOp, FlattenOp, LinearOp, ReLUOp, UnsupportedLayerError,
                  conv_output_padding)
from .ops.checks import check_global_hooks, check_hooks, overridden
from .ops.registry import build_module_op, module_rule

__all__ = ["UnsupportedLayerError", "BoundOp", "LinearOp", "Conv2dOp", "ChannelAffineOp", "ReLUOp", "FlattenOp",
           "conv_output_padding", "flatten_modules", "build_ops", "build_graph", "infer_shapes", "is_plain_sequential"]


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
        if overridden(model, nn.Sequential, ("forward",)):
            raise UnsupportedLayerError(f"{what} subclasses nn.Sequential with its own forward; gmbound bounds "
                                        "only the plain chain of its layers. Use nn.Sequential itself")
        check_hooks(model, what)
        # _modules, not named_children(): that skips a module met before, but Sequential.forward runs a
        # module listed twice (nn.Sequential(fc1, act, fc2, act)) twice, and so must the bounds
        children: Iterable[tuple[str, nn.Module]] = ((n, m) for n, m in model._modules.items() if m is not None)
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


def _convert(index: int, module: nn.Module) -> Optional[BoundOp]:
    return build_module_op(module, f"{type(module).__name__} at index {index}", "Sequentials")


def build_ops(model: Union[nn.Module, Iterable[nn.Module]]) -> list[BoundOp]:
    """Validate a Sequential ``model`` and convert it into bound operations (no-ops removed)."""
    if not isinstance(model, (nn.Sequential, list, tuple)):
        raise UnsupportedLayerError(
            f"gmbound bounds nn.Sequential models here; got {type(model).__name__}. Wrap the layers in nn.Sequential "
            "or use gmbound.network.build_graph (which traces any nn.Module)")
    check_global_hooks()
    ops = [op for i, m in enumerate(flatten_modules(model)) if (op := _convert(i, m)) is not None]
    if not ops:
        raise UnsupportedLayerError("the model has no layers to bound")
    return ops


def is_plain_sequential(model: nn.Module) -> bool:
    """A Sequential (nested ones too) that computes what ``nn.Sequential`` computes: no ``forward`` of its own."""
    if isinstance(model, (list, tuple)):
        return all(is_plain_sequential(m) for m in model if isinstance(m, nn.Sequential))
    if not isinstance(model, nn.Sequential):
        return False
    if overridden(model, nn.Sequential, ("forward",)):
        return False
    return all(is_plain_sequential(m) for m in model.children() if isinstance(m, nn.Sequential))


def _chain_of_layers(model: nn.Sequential) -> bool:
    """Every member is a layer (known, or a torch.nn layer to be refused by name), not a model of its own to trace."""
    return all(module_rule(m) is not None or type(m).__module__.startswith("torch.nn")
               for m in flatten_modules(model))


def build_graph(model: Union[nn.Module, Iterable[nn.Module]], tracer_cache: Optional[dict] = None) -> BoundGraph:
    """The bound graph of ``model``: a chain for a plain Sequential, the torch.fx trace otherwise.

    ``tracer_cache``: a dict kept by the caller, so a model is traced once while its modules stay the same.
    """
    if isinstance(model, (list, tuple)) or (is_plain_sequential(model) and _chain_of_layers(model)):
        return BoundGraph.chain(build_ops(model))
    if not isinstance(model, nn.Module):
        raise UnsupportedLayerError(f"gmbound bounds nn.Module models; got {type(model).__name__}")
    if module_rule(model) is not None:  # a single layer: a chain of one
        return BoundGraph.chain(build_ops([model]))
    from .tracing import graph_of

    return graph_of(model, tracer_cache)


def infer_shapes(model_or_ops, in_shape: tuple[int, ...], dtype: torch.dtype = None,
                 device: torch.device = None) -> list[tuple[int, ...]]:
    """Per-sample output shape of every node of a graph (or a list of Sequential ops; then node 0 is the input)."""
    graph = model_or_ops if isinstance(model_or_ops, BoundGraph) else BoundGraph.chain(model_or_ops)
    return graph.infer_shapes(tuple(in_shape))

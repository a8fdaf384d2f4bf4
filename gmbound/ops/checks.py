"""Only bound what we understand: a layer must compute what its registered base type computes.

A layer is bounded as the function its base class computes. A subclass may add attributes or
change its repr, but if it replaces any of the methods below it computes something else, and
the bound would hold for the wrong function. Forward hooks and pre-hooks (on a layer, a
container or globally) and ``torch.nn.utils.prune``'s pre-hook can change a layer's input,
weights or output behind the bounds' back. Both front ends run these checks on every layer
(``registry.build_module_op``), at every call.
"""
from __future__ import annotations

from torch import nn
from torch.nn.utils import prune

from ..layers import Normalize
from .base import UnsupportedLayerError

_CALL_METHODS = ("__call__", "_call_impl", "_wrapped_call_impl")
# Methods besides ``forward`` through which a base type computes its output.
_EXTRA_METHODS: dict[type, tuple[str, ...]] = {
    nn.Conv2d: ("_conv_forward",),
    Normalize: ("channel_shape",),
}


def overridden(module: nn.Module, base: type, methods: tuple[str, ...]) -> list[str]:
    """The methods among ``methods`` (and the call machinery) that ``type(module)`` replaces."""
    cls = type(module)
    out = [m for m in methods if getattr(cls, m, None) is not getattr(base, m, None)]
    return out + [m for m in _CALL_METHODS if getattr(cls, m, None) is not getattr(nn.Module, m, None)]


def _hook_names(hooks: dict) -> str:
    return ", ".join(sorted({getattr(h, "__qualname__", type(h).__name__) for h in hooks.values()}))


def check_hooks(module: nn.Module, where: str) -> None:
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


def check_understood(module: nn.Module, bases: tuple[type, ...], where: str) -> None:
    """Refuse a layer of a registered type (``bases``) whose computation is not the base layer's, or with hooks."""
    for base in bases:
        if isinstance(module, base):
            changed = overridden(module, base, ("forward",) + _EXTRA_METHODS.get(base, ()))
            if changed:
                name = f"{'gmbound' if base is Normalize else 'nn'}.{base.__name__}"
                raise UnsupportedLayerError(
                    f"{where} subclasses {name} but replaces {', '.join(changed)}; gmbound can only bound what "
                    f"{name} itself computes. Use {name} (or a subclass that keeps its forward)")
            break
    check_hooks(module, where)

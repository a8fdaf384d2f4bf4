"""``BoundDataParallel``: auto_LiRPA's multi-GPU wrapper, here on one device.

auto_LiRPA splits each batch over the visible GPUs. gmbound.compat runs the wrapped
``BoundedModule`` whole, on its own device, and keeps the wrapper's interface so trainers run
unchanged: calls pass through (``model(x)``, ``model(method_opt="compute_bounds", ...)``, with
``disable_multi_gpu`` / ``no_replicas`` accepted), ``model(get_property=True, node_class=,
att_name=)`` or ``node_name=`` reads a node's attribute (``BoundExp.max_input``), and
``state_dict`` / ``parameters`` / ``model[name]`` are the wrapped module's.
"""
from __future__ import annotations

from typing import Optional

from torch import nn

from ..validation import BoundInputError


class BoundDataParallel(nn.Module):
    """``BoundDataParallel(bounded_module, device_ids=None, ...)``: the module, unsplit (see the module docstring)."""

    def __init__(self, module: nn.Module, device_ids=None, output_device=None, dim: int = 0):
        super().__init__()
        self.module = module
        self.device_ids = list(device_ids) if device_ids is not None else []

    def forward(self, *inputs, **kwargs):
        kwargs.pop("disable_multi_gpu", None)
        kwargs.pop("no_replicas", None)
        if kwargs.pop("get_property", False):
            return self.get_property(self, **kwargs)
        return self.module(*inputs, **kwargs)

    @staticmethod
    def get_property(model: nn.Module, node_class: Optional[type] = None, att_name: Optional[str] = None,
                     node_name: Optional[str] = None):
        """Attribute ``att_name`` of the first node of class ``node_class`` (or named ``node_name``) in ``model``."""
        for _, node in model.named_modules():
            if (node_name is not None and getattr(node, "name", None) == node_name) or \
                    (node_name is None and node_class is not None and isinstance(node, node_class)):
                return getattr(node, att_name)
        raise BoundInputError(f"get_property: no node {node_name or getattr(node_class, '__name__', node_class)!r} "
                              "in the model")

    def state_dict(self, *args, **kwargs):
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.module.load_state_dict(state_dict, strict=strict, assign=assign)

    def __getitem__(self, name: str):
        return self.module[name]

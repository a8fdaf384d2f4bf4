"""Read an auto_LiRPA ``BoundedModule.state_dict()`` (keys ``"/N.param"``, ``"/N.buffer"``).

auto_LiRPA names each parameter and buffer node after its number in the traced graph: the
model's inputs first, then the entries of the model's ``state_dict`` in order, where entries
the graph does not use (BatchNorm's ``num_batches_tracked``) get a number but no node. So,
sorted by ``N``, the keys are the model's used ``state_dict`` entries in order. Each is checked
against the shape of the entry it lands on; a mismatch is an error naming both.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Mapping

import torch

from ..validation import BoundInputError

_KEY = re.compile(r"^/(\d+)\.(param|buffer)$")
_UNUSED_BY_THE_GRAPH = ("num_batches_tracked",)


def is_lirpa_state_dict(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True when every key has auto_LiRPA's node form ``"/N.param"`` or ``"/N.buffer"``."""
    return bool(state_dict) and all(isinstance(k, str) and _KEY.match(k) for k in state_dict)


def translate_lirpa_state_dict(state_dict: Mapping[str, torch.Tensor],
                               own: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """``state_dict`` re-keyed with the model's own names (``own``: this module's ``state_dict()``).

    Entries auto_LiRPA does not store (``num_batches_tracked``) keep their current values.
    """
    ordered = sorted(state_dict, key=lambda k: int(_KEY.match(k).group(1)))
    targets = [k for k in own if not k.endswith(_UNUSED_BY_THE_GRAPH)]
    if len(ordered) != len(targets):
        raise BoundInputError(
            f"the auto_LiRPA state_dict has {len(ordered)} parameter/buffer entries but the model uses "
            f"{len(targets)} ({', '.join(targets[:6])}{', ...' if len(targets) > 6 else ''}): not the same model")
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for src, dst in zip(ordered, targets):
        value = state_dict[src]
        if tuple(value.shape) != tuple(own[dst].shape):
            raise BoundInputError(f"auto_LiRPA state_dict entry {src!r} has shape {tuple(value.shape)} but it maps "
                                  f"to the model's {dst!r} of shape {tuple(own[dst].shape)}: not the same model")
        out[dst] = value
    for key, value in own.items():
        out.setdefault(key, value)
    return OrderedDict((k, out[k]) for k in own)

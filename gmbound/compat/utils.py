"""The helpers auto_LiRPA's example trainers import from ``auto_LiRPA.utils``.

``MultiAverageMeter`` (running averages printed as ``key=value`` with four decimals), ``Flatten``,
``logger`` (INFO to standard output, as auto_LiRPA's), ``get_spec_matrix`` (the margin
specification) and ``sync_params`` (copy trained parameters back into the original model).
"""
from __future__ import annotations

import logging
import sys
from collections import defaultdict
from typing import Optional

import torch
from torch import nn

from ..specification import margin_spec
from ..validation import BoundInputError


def _make_logger() -> logging.Logger:
    """A logger that prints INFO records to stdout in auto_LiRPA's format, without touching the root logger."""
    log = logging.getLogger("gmbound.compat")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(levelname)-8s %(asctime)-12s [%(filename)s:%(lineno)d] %(message)s",
                                               datefmt="%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    return log


logger = _make_logger()


class MultiAverageMeter:
    """Running averages of several named values; ``str(meter)`` is ``"k1=v1 k2=v2"`` (4 decimals, insertion order)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sum_meter: dict[str, float] = defaultdict(float)
        self.lasts: dict[str, float] = defaultdict(float)
        self.counts_meter: dict[str, int] = defaultdict(int)
        self.batch_size = 1

    def set_batch_size(self, batch_size: int) -> None:
        self.batch_size = batch_size

    def update(self, key: str, val, n: Optional[int] = None) -> None:
        """Add ``val`` (a number or a one-element tensor) with weight ``n`` (default: the batch size); None is skipped."""
        if val is None:
            return
        if n is None:
            n = self.batch_size
        if isinstance(val, torch.Tensor):
            val = val.item()
        self.lasts[key] = val
        self.sum_meter[key] += val * n
        self.counts_meter[key] += n

    def last(self, key: str) -> float:
        return self.lasts[key]

    def avg(self, key: str) -> float:
        count = self.counts_meter[key]
        return self.sum_meter[key] / count if count else 0.0

    def __repr__(self) -> str:
        return " ".join(f"{k}={self.avg(k):.4f}" for k in self.sum_meter)


class Flatten(nn.Flatten):
    """auto_LiRPA's legacy ``Flatten`` (``nn.Flatten()``, from dimension 1)."""


def get_spec_matrix(X: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Rows ``e_y - e_j`` for ``j != y`` in ascending ``j``: ``[B, num_classes - 1, num_classes]``, ``X``'s dtype."""
    with torch.no_grad():
        return margin_spec(y, num_classes, dtype=X.dtype).to(X.device)


def sync_params(model_ori: nn.Module, model: nn.Module, loss_fusion: bool = False) -> dict:
    """Load ``model``'s parameters and buffers into ``model_ori``; return ``model_ori``'s new state_dict.

    ``model`` is a ``gmbound.compat.BoundedModule`` of ``model_ori`` (or of its
    ``CrossEntropyWrapper``, with ``loss_fusion=True``: keys ``"model.<name>"``), or a
    ``BoundDataParallel`` of one. gmbound.compat shares the parameters with ``model_ori`` (they are
    its own), so this copies them onto themselves; it still checks that every key lands.
    """
    own = model_ori.state_dict()
    for name, value in model.state_dict().items():
        key = name
        if loss_fusion:
            if not key.startswith("model."):
                raise BoundInputError(f"sync_params(loss_fusion=True): key {name!r} is not under the wrapper's "
                                      "'model.'; was the BoundedModule built from a CrossEntropyWrapper?")
            key = key[len("model."):]
        if key not in own:
            raise BoundInputError(f"sync_params: {name!r} has no counterpart {key!r} in the original model")
        own[key] = value
    model_ori.load_state_dict(own)
    return own

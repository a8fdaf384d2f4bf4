"""The ReLU bound op: lazy in IBP, CROWN-IBP's adaptive linear relaxation in CROWN."""
from __future__ import annotations

import torch

from .base import BoundOp, Interval, materialise


class ReLUOp(BoundOp):
    """``relu(a)``. Its interval value keeps the pre-activation bounds with ``relu_pending`` set."""

    kind = "relu"
    relaxation = "CROWN-IBP's: chord above; slope 1 or 0 below (1 when u > -l)"

    def forward(self, a: torch.Tensor, update_running_stats: bool = True) -> torch.Tensor:
        return torch.relu(a)  # never in place: the input may feed another branch too

    def interval(self, prims, a: Interval) -> Interval:
        # Two ReLUs in a row: the first one acts; the pre-activation bounds of this one are its output.
        return Interval(*materialise(a, prims), relu_pending=True)

    def relu_slope(self) -> float:
        return 0.0

    def backward(self, prims, lam, in_shapes, out_shape, pre):
        lam_in, term = prims.relu_backward(lam, *pre)
        return [lam_in], term

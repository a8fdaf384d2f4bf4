"""The contract every bound operation follows, and the interval value that flows between them.

A bound op is one node of a network. It owns, for its node:

* ``forward``: the clean (concrete) computation;
* ``out_shape``: its per-sample output shape from its inputs' shapes (checking they fit);
* ``interval``: its IBP step on interval bounds ``[N, B, *S]``;
* ``backward``: its CROWN step, taking Lambda on its output to Lambda on each input plus a bias term.

Ops read their modules' parameters at every call, so gradients reach them and optimiser
updates are seen without rebuilding anything.
"""
from __future__ import annotations

from typing import ClassVar, NamedTuple, Optional, Sequence

import torch
from torch import nn

Shape = tuple[int, ...]


class UnsupportedLayerError(TypeError):
    """Raised for a layer (or graph node) the bound engine cannot bound."""


class Interval(NamedTuple):
    """Interval bounds ``[N, B, *S]`` of a node's output.

    ``relu_pending``: the node is a ReLU whose bounds are still those of its input (the
    pre-activation bounds CROWN needs); the ReLU is applied by whoever reads them, so an
    affine step right after it costs no extra pass.
    """

    lower: torch.Tensor
    upper: torch.Tensor
    relu_pending: bool = False


def materialise(value: Interval, prims) -> tuple[torch.Tensor, torch.Tensor]:
    """The actual bounds of the node's output (a pending ReLU applied)."""
    if value.relu_pending:
        return prims.relu_bounds(value.lower, value.upper)
    return value.lower, value.upper


class BoundOp:
    """Base class of the bound operations; ``where`` names the op in errors.

    ``kind`` tells the drivers how interval arithmetic behaves through the op: ``"diagonal"``
    (element-wise affine or a reshape: intervals stay exact), ``"linear"`` (a general affine map),
    ``"relu"``, ``"merge"`` (several inputs, linear) or ``"nonlinear"`` (any other nonlinear op:
    its ``backward`` receives as ``pre`` the actual bounds of its input, a pair ``(lower,
    upper)``, or a tuple of such pairs when it has several inputs).
    """

    kind: ClassVar[str] = "linear"
    n_inputs: ClassVar[int] = 1
    # How CROWN relaxes the op (the README's table of operations is generated from it).
    relaxation: ClassVar[str] = "none needed (linear)"

    def __init__(self, module: Optional[nn.Module], where: str):
        self.module = module
        self.where = where

    @property
    def name(self) -> str:
        return self.where

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.where})"

    def forward(self, *inputs: torch.Tensor, update_running_stats: bool = True) -> torch.Tensor:
        """The clean forward of this op (by default: the module itself)."""
        return self.module(*inputs)

    def shape_signature(self) -> tuple:
        """What the output shape depends on besides the input shapes (settings of the op), for shape caches."""
        return ()

    def out_shape(self, *in_shapes: Shape) -> Shape:
        """Per-sample output shape; raises ``ValueError`` naming the op when the inputs do not fit."""
        return in_shapes[0]

    def interval(self, prims, *inputs: Interval) -> Interval:
        """IBP step: bounds of the output from the inputs' bounds."""
        raise NotImplementedError(f"no interval step for {self.where}")

    def relu_slope(self) -> Optional[float]:
        """``a`` when the op is ``leaky_relu`` with ``0 <= a <= 1`` (ReLU: 0), else None.

        Such an op's CROWN step is the ReLU kernels' (``prims.relu_backward(..., negative_slope=a)``),
        which the drivers may fuse with the Linear / Conv2d below it.
        """
        return None

    def backward(self, prims, lam: torch.Tensor, in_shapes: Sequence[Shape], out_shape: Shape,
                 pre: Optional[tuple[torch.Tensor, torch.Tensor]]
                 ) -> tuple[list[torch.Tensor], Optional[torch.Tensor]]:
        """CROWN step: ``lam . out >= sum_i lam_i . in_i + bias``; returns ``([lam_i], bias or None)``.

        ``lam``: ``[M, B, K, *out_shape]``; ``pre``: the pre-activation bounds (ReLU only).
        """
        raise NotImplementedError(f"no backward step for {self.where}")

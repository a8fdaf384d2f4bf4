"""Loss fusion: bound the cross-entropy itself, one specification row instead of K.

``CrossEntropyWrapper(model)(x, labels) = sum_j exp(z_j)`` with ``z = y - y_label`` and
``y = model(x)``, so ``log`` of it is the cross-entropy. Under
``bound_opts={"loss_fusion": True}`` a ``BoundedModule`` of the wrapper bounds it as auto_LiRPA
does (its ``interval_bound._IBP_loss_fusion`` and ``BoundExp``), with every exponential shifted
by ``m = max_j`` (of what the pass sees) for range; trainers add ``m`` back:
``robust_ce = mean(log(ub) + max_input)``.

* **IBP.** ``[l_j, u_j]``: interval bounds of ``z_j``, the label subtraction folded into the
  last Linear layer (``W - W_y``, ``b - b_y``; the label's own row is exactly 0); without a
  trailing Linear layer, ``[l_j - u_y, u_j - l_y]`` from the logits' intervals, as auto_LiRPA's
  generic graph gives. ``m = max_j u_j``; ``[sum_j exp(l_j - m), sum_j exp(u_j - m)]``.
* **CROWN-IBP** (a ``"backward"`` call after the IBP call on the same input): the chord of
  ``exp`` over ``[l_j, u_j]`` bounds it from above, ``exp(z_j - m) <= k_j z_j + c_j``, with
  ``k_j = (e^{u_j - m} - e^{l_j - m}) / (u_j - l_j)`` (``specification.exp_chord_slope``, shared with
  ``gm_loss(loss_fusion=True)``; the derivative at zero width) and
  ``c_j = e^{l_j - m} - k_j l_j``; ``m`` is detached here. So ``sum_j exp(z_j - m)`` is at most
  ``lam . y + sum_j c_j`` with ``lam = k - (sum_j k_j) e_label``: **one** row, bounded above by
  a CROWN-IBP back-substitution through the model (the non-fused loss needs ``K = n - 1`` rows).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..specification import exp_chord_slope

Interval = tuple[torch.Tensor, torch.Tensor]


class CrossEntropyWrapper(nn.Module):
    """``forward(x, labels) = sum_j exp(y_j - y_label)`` (``[B, 1]``) for ``y = model(x)``, as auto_LiRPA's.

    Wrap it in ``BoundedModule(..., bound_opts={"loss_fusion": True})`` to bound the loss.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        y = self.model(x)
        return torch.exp(label_differences(y, labels)).sum(dim=-1, keepdim=True)


def label_differences(y: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``z = y - y_label``: ``[B, n]``."""
    return y - torch.gather(y, dim=-1, index=labels.unsqueeze(-1))


def fused_forward(y: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused graph's clean output ``sum_j exp(z_j - m)`` and ``m = max_j z_j`` (detached), ``[B, 1]`` each.

    Note ``log`` of the output is the cross-entropy minus ``m`` (auto_LiRPA's trainers log it as is).
    """
    z = label_differences(y, labels)
    m = z.max(dim=-1, keepdim=True)[0].detach()
    return torch.exp(z - m).sum(dim=-1, keepdim=True), m


def difference_spec(labels: torch.Tensor, n_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """Rows ``e_j - e_label`` for every class ``j`` (the label's row is 0): ``[B, n, n]``."""
    eye = torch.eye(n_classes, dtype=dtype, device=labels.device)
    return eye.unsqueeze(0) - F.one_hot(labels, n_classes).to(dtype).unsqueeze(1)


def difference_interval_from_logits(lower: torch.Tensor, upper: torch.Tensor, labels: torch.Tensor) -> Interval:
    """``[l_j - u_y, u_j - l_y]``: the interval of ``z`` from the logits' own intervals (no folding)."""
    idx = labels.unsqueeze(-1)
    return lower - torch.gather(upper, -1, idx), upper - torch.gather(lower, -1, idx)


def exp_sum_interval(z_lower: torch.Tensor, z_upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """IBP through ``exp(z - m)`` and the sum: ``(lower [B, 1], upper [B, 1], m [B, 1])``, ``m = max_j u_j``."""
    m = z_upper.max(dim=-1, keepdim=True)[0]
    lower = torch.exp(z_lower - m).sum(dim=-1, keepdim=True)
    upper = torch.exp(z_upper - m).sum(dim=-1, keepdim=True)
    return lower, upper, m


def exp_chord(z_lower: torch.Tensor, z_upper: torch.Tensor, labels: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The upper relaxation of ``sum_j exp(z_j - m)`` as a function of the logits ``y``.

    Returns ``(lam [B, n], const [B], m [B, 1])`` with ``sum_j exp(z_j - m) <= lam . y + const``
    on the box (``m`` detached, as in auto_LiRPA's backward pass).
    """
    m = z_upper.max(dim=-1, keepdim=True)[0].detach()
    lo, hi = z_lower - m, z_upper - m
    exp_lo = torch.exp(lo)
    k = exp_chord_slope(lo, hi)   # the native loss fusion's chord slope (no overflow, no cancellation)
    if k.requires_grad:
        k = k.clamp(min=1e-8)     # auto_LiRPA's floor on the slope while training
    # exp(z - m) <= k (z - lo - m) + exp(lo) = k z + (exp(lo) - k lo) - k m
    const = (exp_lo - lo * k).sum(dim=-1) - k.sum(dim=-1) * m.squeeze(-1)
    lam = k - k.sum(dim=-1, keepdim=True) * F.one_hot(labels, k.shape[-1]).to(k.dtype)
    return lam, const, m


def fused_crown_upper(z_box: Interval, labels: torch.Tensor,
                      upper_of: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """CROWN-IBP upper bound ``[B, 1]`` of the fused loss and the offset ``m``.

    ``upper_of(spec)`` returns the upper bound ``[B, 1]`` of ``spec . y`` (``spec``: ``[B, 1, n]``).
    """
    lam, const, m = exp_chord(z_box[0], z_box[1], labels)
    return upper_of(lam.unsqueeze(1)) + const.unsqueeze(-1), m


def check_labels_for(labels: Optional[torch.Tensor], batch: int, n_classes: int) -> torch.Tensor:
    """The labels of a loss-fusion input, checked: integer ``[B]`` with values in ``[0, n)``."""
    from ..validation import BoundInputError
    if labels is None:
        raise BoundInputError("a CrossEntropyWrapper model takes (x, labels); the labels are missing")
    if not isinstance(labels, torch.Tensor) or labels.dtype not in (torch.int64, torch.int32, torch.int16,
                                                                       torch.uint8, torch.int8):
        raise BoundInputError(f"labels must be an integer tensor, got {getattr(labels, 'dtype', type(labels))}")
    labels = labels.long()
    if labels.dim() != 1 or labels.shape[0] != batch:
        raise BoundInputError(f"labels must have shape [{batch}], got {tuple(labels.shape)}")
    if batch and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise BoundInputError(f"labels must lie in [0, {n_classes}), got values in "
                              f"[{int(labels.min())}, {int(labels.max())}]")
    return labels

"""Margin specifications ``C`` and the robust logits built from their lower bounds."""
from __future__ import annotations

import torch


def other_classes(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """For each label, the ``n_classes - 1`` other class indices in ascending order: ``[B, n - 1]``."""
    j = torch.arange(n_classes - 1, device=y.device).unsqueeze(0)  # [1, n-1]
    return j + (j >= y.unsqueeze(1)).long()                          # skip y


def margin_spec(y: torch.Tensor, n_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The standard specification: rows ``e_y - e_j`` for ``j != y``, shape ``[B, n - 1, n]``.

    ``C f(x)`` then holds the margins ``f_y - f_j``; the sample is verified when all are > 0.
    """
    batch = y.shape[0]
    spec = torch.zeros(batch, n_classes - 1, n_classes, dtype=dtype, device=y.device)
    spec.scatter_(2, y.view(batch, 1, 1).expand(batch, n_classes - 1, 1), 1.0)
    spec.scatter_(2, other_classes(y, n_classes).unsqueeze(2), -1.0)
    return spec


def robust_logits(margin_lb: torch.Tensor, y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Logits ``-m`` with 0 in place of class ``y`` (``margin_lb``: ``[..., B, n - 1]`` from ``margin_spec``).

    Cross-entropy of these logits is the robust loss: it upper-bounds the worst-case
    cross-entropy over the box (CROWN-IBP's Theorem 2 form).
    """
    lead = margin_lb.shape[:-1]
    logits = torch.zeros(lead + (n_classes,), dtype=margin_lb.dtype, device=margin_lb.device)
    index = other_classes(y, n_classes).expand(lead + (n_classes - 1,))
    return logits.scatter(-1, index, -margin_lb)

"""Margin specifications ``C`` and the robust logits built from their lower bounds."""
from __future__ import annotations

from typing import Callable, Optional

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


# ----------------------------------------------------------------------------- loss fusion
# With z_j = f_j - f_y (so z_y = 0), CE(f, y) = log sum_j exp(z_j). Loss fusion bounds the sum S = sum_j exp(z_j)
# from above over the box with ONE specification row: exp is convex, so on the interval [l_j, u_j] of z_j it
# lies below its chord, exp(z_j) <= exp(l_j) + k_j (z_j - l_j), k_j = (e^{u_j} - e^{l_j}) / (u_j - l_j).
# Summed over j, S <= lam . f + const with lam = sum_{j != y} k_j (e_j - e_y): one row, bounded above by one
# CROWN-IBP back-substitution (the margin loss needs n - 1 rows). Everything is shifted by m = max(0, max_j u_j)
# (exp(z - m) <= 1: no overflow); the chord of exp(z - m) is e^{-m} times the chord of exp(z), so
# log(bound of sum exp(z - m)) + m does not depend on m, and m is detached.


def exp_chord_slope(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """Slope of the chord of ``exp`` over ``[l, u]``: ``(e^u - e^l) / (u - l) = e^u (1 - e^{-w}) / w``, ``w = u - l``.

    The ``expm1`` form neither cancels for narrow intervals (small eps) nor overflows for wide ones, and at
    ``w -> 0`` it is the derivative ``e^u (1 - w/2 + w^2/6)`` (to ``w^3``), with finite gradients everywhere.
    """
    width = (upper - lower).clamp(min=0)
    narrow = width < 1e-4
    safe = torch.where(narrow, torch.ones_like(width), width)  # no 0/0 in the branch torch.where drops
    ratio = torch.where(narrow, 1 - width / 2 * (1 - width / 3), -torch.expm1(-safe) / safe)  # Taylor: error w^3/24
    return torch.exp(upper) * ratio


def loss_fusion_row(z_lower: torch.Tensor, z_upper: torch.Tensor, y: torch.Tensor,
                    n_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The chord relaxation of ``S = sum_j exp(z_j - m)`` over the box, as one row on the logits.

    ``z_lower``, ``z_upper``: ``[..., B, n - 1]`` bounds of ``z_j = f_j - f_y`` for ``j != y`` (ascending,
    as ``margin_spec``). Returns ``(lam [..., B, n], const [..., B], m [..., B])`` with
    ``S <= lam . f(x') + const`` for every ``x'`` whose ``z`` lies in the intervals (``m`` detached).
    """
    m = z_upper.max(dim=-1)[0].clamp(min=0).detach()
    lo = z_lower - m.unsqueeze(-1)
    k = exp_chord_slope(lo, z_upper - m.unsqueeze(-1))
    # exp(z_j - m) <= e^{lo_j} + k_j (z_j - l_j); the label's term exp(0 - m) is a constant
    const = torch.exp(-m) + (torch.exp(lo) - k * z_lower).sum(-1)
    lead = k.shape[:-1]
    lam = torch.zeros(lead + (n_classes,), dtype=k.dtype, device=k.device)
    lam = lam.scatter(-1, other_classes(y, n_classes).expand(lead + (n_classes - 1,)), k)
    lam = lam.scatter(-1, y.view(-1, 1).expand(lead + (1,)), -k.sum(-1, keepdim=True))
    return lam, const, m


def exp_sum_upper(z_upper: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """IBP upper bound of ``S = sum_j exp(z_j - m)``: ``e^{-m} + sum_{j != y} exp(u_j - m)`` (``[..., B]``)."""
    return torch.exp(-m) + torch.exp(z_upper - m.unsqueeze(-1)).sum(-1)


def fused_cross_entropy_bound(z_lower: torch.Tensor, z_upper: torch.Tensor, y: torch.Tensor, n_classes: int,
                              beta: float, crown_upper: Optional[Callable[[torch.Tensor], torch.Tensor]]
                              ) -> torch.Tensor:
    """Upper bound of ``max CE(f(x'), y)`` over the box from the IBP intervals of ``z`` and one CROWN row.

    ``crown_upper(lam)`` returns the CROWN-IBP upper bound of ``lam . f(x')`` (``lam``: ``[..., B, n]``,
    result ``[..., B]``); None (or ``beta = 0``) gives the IBP bound ``log(1 + sum_j exp(u_j))``, which is
    exactly ``CE(-m_IBP, y)``. With ``0 < beta < 1`` the two upper bounds of ``S`` are mixed,
    ``beta * S_CROWN + (1 - beta) * S_IBP`` (a convex combination of upper bounds is one; auto_LiRPA's
    trainers mix the same way). Returns ``log S_bound + m``: ``[..., B]``.
    """
    m = z_upper.max(dim=-1)[0].clamp(min=0).detach()
    if crown_upper is None or beta <= 0:
        s = exp_sum_upper(z_upper, m)
    else:
        lam, const, m = loss_fusion_row(z_lower, z_upper, y, n_classes)
        s = crown_upper(lam) + const
        if beta < 1:
            s = beta * s + (1 - beta) * exp_sum_upper(z_upper, m)
    # S >= e^{-m} > 0 in exact arithmetic; a CROWN row whose terms cancel can round to <= 0 when the chord
    # bound is far below 1 (IBP far looser than CROWN). Raising an upper bound keeps it one.
    return torch.log(s.clamp(min=torch.finfo(s.dtype).tiny)) + m

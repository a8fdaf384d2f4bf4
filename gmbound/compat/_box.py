"""Map auto_LiRPA's box (a ``PerturbationLpNorm`` around ``x``) onto gmbound's ``eps, x_min, x_max``.

gmbound bounds the box ``[max(x - r, x_min), min(x + r, x_max)]``. An auto_LiRPA box ``[L, U]``
containing ``x`` is exactly that box with ``x_min = L``, ``x_max = U`` and any radius ``r`` with
``x - r <= L`` and ``x + r >= U`` everywhere: the clipping then picks ``L`` and ``U`` themselves,
bit for bit. ``covering_radius`` finds the smallest such ``r`` in floating point (and checks it).
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch

from ..validation import BoundInputError
from .perturbations import PerturbationLpNorm


def covering_radius(x: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor,
                    per_sample: bool = True) -> torch.Tensor:
    """Smallest float radius ``r`` with ``x - r <= lower`` and ``x + r >= upper``: ``[B]``, or a scalar.

    Computed without gradient: the box's edges, not the radius, carry it.
    """
    with torch.no_grad():
        reach = torch.maximum(upper - x, x - lower).flatten(1).amax(1)   # [B]
        if reach.numel() == 0:  # an empty batch: any radius covers it
            return reach if per_sample else reach.new_zeros(())
        if not per_sample:
            reach = reach.amax()
        view = (-1,) + (1,) * (x.dim() - 1) if per_sample else ()
        for _ in range(16):  # rounding in x - lower can leave r an ulp short; step up until it covers
            r = reach.reshape(view)
            covers = ((x - r) <= lower) & ((x + r) >= upper)
            covers = covers.flatten(1).all(1) if per_sample else covers.all()
            if bool(covers.all()):
                return reach
            reach = torch.where(covers, reach, torch.nextafter(reach, torch.full_like(reach, float("inf"))))
    raise BoundInputError("could not find a finite radius covering the box [x_L, x_U]; are they finite?")


def per_sample_eps(eps: torch.Tensor, x: torch.Tensor) -> Optional[torch.Tensor]:
    """``eps`` as radii ``[1, B]`` when it is one number per sample (or one overall), else None."""
    if eps.numel() == 1:
        return eps.reshape(1)
    if eps.dim() == x.dim() and eps.shape[0] == x.shape[0] and all(s == 1 for s in eps.shape[1:]):
        return eps.reshape(1, x.shape[0])
    return None


def checked_box(x: torch.Tensor, ptb: PerturbationLpNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """The perturbation's box around ``x``, widened where needed to contain ``x``.

    gmbound certifies boxes around the clean point. Trainers build ``x_L``/``x_U`` by clamping to
    data limits computed in another precision (``(1 - mean) / std`` in float64 against float32
    data), so ``x`` can stick out of its box by a rounding error, and the box can even be empty
    there. The smallest box containing both ``[x_L, x_U]`` and ``x`` keeps the bounds sound for
    ``[x_L, x_U]``; a warning says when ``x`` lies outside by more than rounding.
    """
    lower, upper = ptb.box(x)
    for name, t in (("x_L", lower), ("x_U", upper)):
        if not bool(torch.isfinite(t).all()):
            raise BoundInputError(f"PerturbationLpNorm: {name} contains NaN or inf")
    with torch.no_grad():
        scale = 1.0 + (x.abs().max().item() if x.numel() else 0.0)
        inverted = (lower - upper).max().item() if x.numel() else 0.0
    if inverted > 1e-5 * scale:  # more than rounding (which the widening below absorbs)
        raise BoundInputError(f"PerturbationLpNorm: x_L exceeds x_U by up to {inverted:.3g}: the box [x_L, x_U] "
                              "is empty")
    below, above = x < lower, x > upper
    if bool(below.any()) or bool(above.any()):
        with torch.no_grad():
            gap = torch.maximum((lower - x).clamp_min(0).max(), (x - upper).clamp_min(0).max()).item()
        if gap > 1e-5 * scale:
            warnings.warn(f"the clean input lies outside its box [x_L, x_U] by up to {gap:.3g}; gmbound.compat "
                          "bounds the smallest box containing both (sound for [x_L, x_U], but looser)", stacklevel=4)
        lower = torch.where(below, x, lower)
        upper = torch.where(above, x, upper)
    return lower, upper


def native_box(x: torch.Tensor, ptb: Optional[PerturbationLpNorm]):
    """``(eps, x_min, x_max)`` for ``BoundedSequential.bounds`` giving exactly the box of ``ptb`` around ``x``.

    ``eps`` is ``[1]`` or ``[1, B]`` (one radius); without a perturbation the box is the point ``x``.
    """
    if ptb is None:
        return torch.zeros(1, dtype=x.dtype, device=x.device), None, None
    if not ptb.has_explicit_box:
        radii = per_sample_eps(ptb.eps_tensor(x), x)
        if radii is not None:       # the unclipped box x -/+ eps: gmbound's own form
            return radii, None, None
    lower, upper = checked_box(x, ptb)
    return covering_radius(x, lower, upper).unsqueeze(0), lower, upper


def nested_boxes(x: torch.Tensor, ptb: Optional[PerturbationLpNorm], radii: Optional[torch.Tensor],
                 eps: Optional[float]):
    """gmbound's multi-radius family inside the perturbation's box ``[L, U]``.

    Box ``i`` is ``[max(x - r_i, L), min(x + r_i, U)]``. The radii are ``radii`` if given, else
    ``r_i = i/N * eps_gm`` with ``eps_gm = eps`` if given, else the smallest radius whose box is
    ``[L, U]`` for every sample of the batch (so box ``N`` is the box ``compute_bounds`` bounds).
    Returns ``(eps_gm or None, radii or None, x_min, x_max)``: exactly one of the first two is set.
    """
    if ptb is None:
        raise BoundInputError("the multi-radius methods need a perturbed input: "
                              "BoundedTensor(x, PerturbationLpNorm(...))")
    override = None if eps is None else torch.as_tensor(eps, dtype=x.dtype, device=x.device)
    if not ptb.has_explicit_box:
        e = ptb.eps_tensor(x)
        if e.numel() == 1:
            # The unclipped box x -/+ e: radii up to e need no clipping, and min(r, e) is the same box.
            e = e.reshape(())
            if radii is not None:
                return None, torch.minimum(radii, e), None, None
            if override is None or bool(override <= e):
                return (e if override is None else override), None, None, None
    lower, upper = checked_box(x, ptb)
    if radii is not None:
        return None, radii, lower, upper
    gm_eps = covering_radius(x, lower, upper, per_sample=False) if override is None else override
    return gm_eps, None, lower, upper

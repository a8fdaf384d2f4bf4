"""``PerturbationLpNorm`` for ``norm=inf``: the input box, with auto_LiRPA's semantics.

Mirrors ``auto_LiRPA.perturbations`` so ``from auto_LiRPA.perturbations import PerturbationLpNorm``
becomes ``from gmbound.compat.perturbations import PerturbationLpNorm``. Trainers also write
``from auto_LiRPA.perturbations import *`` and then use ``np`` and ``torch`` without importing
them; ``__all__`` hands out what that star import gives them: the perturbation classes (the
ones outside gmbound's subset raise ``UnsupportedFeatureError`` when built), ``np``, ``torch``,
``math``, ``os``, ``json`` and ``logger``.
"""
from __future__ import annotations

import json  # noqa: F401  (handed out by the star import, as auto_LiRPA's module does)
import math
import os  # noqa: F401
from typing import Optional, Union

import numpy as np
import torch

from ..validation import BoundInputError
from .errors import UnsupportedFeatureError
from .utils import logger

__all__ = ["Perturbation", "PerturbationLpNorm", "PerturbationL0Norm", "PerturbationSynonym", "PerturbationLinear",
           "np", "torch", "math", "os", "json", "logger"]

EpsLike = Union[float, torch.Tensor]


def _is_inf_norm(norm) -> bool:
    if isinstance(norm, str):
        return norm.strip().lower() in ("inf", "linf", "l_inf", "np.inf")
    try:
        return math.isinf(float(norm)) and float(norm) > 0
    except (TypeError, ValueError):
        return False


def is_default(value) -> bool:
    """None, False, 0 or an empty container: what an unused optional auto_LiRPA argument holds."""
    if value is None:
        return True
    if isinstance(value, (bool, int, float, str, dict, list, tuple)):
        return not value
    return False


class Perturbation:
    """Base class of auto_LiRPA's perturbations; gmbound.compat implements ``PerturbationLpNorm(norm=np.inf)``."""


class _Refused(Perturbation):
    """An auto_LiRPA perturbation outside gmbound's subset: the name exists, building one raises."""

    why = "it is outside gmbound.compat's subset"

    def __init__(self, *args, **kwargs):
        raise UnsupportedFeatureError(f"{type(self).__name__}: {self.why}; gmbound.compat bounds L-inf boxes, "
                                      "PerturbationLpNorm(norm=np.inf, eps=..., x_L=..., x_U=...)")


class PerturbationL0Norm(_Refused):
    why = "L0 perturbations are outside gmbound.compat's subset"


class PerturbationSynonym(_Refused):
    why = "synonym (NLP) perturbations are outside gmbound.compat's subset"


class PerturbationLinear(_Refused):
    why = "linear-constraint perturbations are outside gmbound.compat's subset"


class PerturbationLpNorm(Perturbation):
    """An L-inf perturbation of the input: the box the bounds hold on.

    ``PerturbationLpNorm(eps=0, norm=np.inf, x_L=None, x_U=None)``, keyword or positional in
    auto_LiRPA's order. The box for a clean input ``x`` is, exactly as auto_LiRPA defines it,

    * lower edge ``x_L`` if given, else ``x - eps``;
    * upper edge ``x_U`` if given, else ``x + eps``.

    So when both ``x_L`` and ``x_U`` are given, ``eps`` plays no part in the bounds: the box is
    ``[x_L, x_U]``. CROWN-IBP-style trainers pass ``x_L = max(x - eps, data_min)`` and
    ``x_U = min(x + eps, data_max)``, the clipped box. ``eps`` is a number or a tensor that
    broadcasts against ``x`` (per sample ``[B, 1, ..., 1]``, per channel ``[1, C, 1, 1]``, ...).

    Only ``norm=np.inf`` is supported (any other raises ``UnsupportedFeatureError``). gmbound
    certifies boxes around the clean point: where ``x`` lies outside ``[x_L, x_U]`` (trainers'
    clamping can leave it out by a rounding error), the box is widened to contain it, which keeps
    the bounds sound for ``[x_L, x_U]``; a warning says when the gap exceeds rounding.
    """

    def __init__(self, eps: EpsLike = 0, norm=math.inf, x_L: Optional[torch.Tensor] = None,
                 x_U: Optional[torch.Tensor] = None, **kwargs):
        if not _is_inf_norm(norm):
            raise UnsupportedFeatureError(
                f"PerturbationLpNorm(norm={norm!r}): gmbound.compat supports only norm=np.inf (L-inf boxes); "
                "L1/L2 balls and PerturbationL0Norm are outside its subset")
        if kwargs.get("relative"):
            raise UnsupportedFeatureError("PerturbationLpNorm(relative=True) is outside gmbound.compat's subset")
        unknown = [k for k, v in kwargs.items() if k != "relative" and not is_default(v)]
        if unknown:
            raise UnsupportedFeatureError(
                f"PerturbationLpNorm: argument(s) {sorted(unknown)} are outside gmbound.compat's subset "
                "(it takes eps, norm=np.inf, x_L, x_U)")
        for name, t in (("x_L", x_L), ("x_U", x_U)):
            if t is not None and not isinstance(t, torch.Tensor):
                raise BoundInputError(f"PerturbationLpNorm: {name} must be a torch.Tensor or None, "
                                      f"got {type(t).__name__}")
        if not isinstance(eps, torch.Tensor):
            try:
                value = float(eps)
            except (TypeError, ValueError):
                raise BoundInputError(f"PerturbationLpNorm: eps must be a number or a tensor, "
                                      f"got {type(eps).__name__}") from None
            if not math.isfinite(value) or value < 0:
                raise BoundInputError(f"PerturbationLpNorm: eps must be finite and non-negative, got {value}")
        self.eps = eps
        self.norm = math.inf
        self.x_L = x_L
        self.x_U = x_U

    def set_eps(self, eps: EpsLike) -> None:
        """As auto_LiRPA's: change ``eps`` in place (it matters only where ``x_L``/``x_U`` are None)."""
        self.eps = eps

    @property
    def has_explicit_box(self) -> bool:
        """True when ``x_L`` or ``x_U`` is given, i.e. the box is not simply ``x -/+ eps``."""
        return self.x_L is not None or self.x_U is not None

    def eps_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """``eps`` as a tensor in the dtype and on the device of ``x``, checked to broadcast against it."""
        eps = torch.as_tensor(self.eps, dtype=x.dtype, device=x.device)
        try:
            torch.broadcast_shapes(eps.shape, x.shape)
        except RuntimeError:
            raise BoundInputError(f"PerturbationLpNorm: eps of shape {tuple(eps.shape)} does not broadcast "
                                  f"against x of shape {tuple(x.shape)}") from None
        if not bool(torch.isfinite(eps).all()) or bool((eps < 0).any()):
            raise BoundInputError("PerturbationLpNorm: eps must be finite and non-negative")
        return eps

    def box(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The box ``(lower, upper)`` around ``x`` (auto_LiRPA's ``init`` for ``norm=inf``), shaped like ``x``."""
        lower = self.x_L if self.x_L is not None else x - self.eps_tensor(x)
        upper = self.x_U if self.x_U is not None else x + self.eps_tensor(x)
        out = []
        for name, t in (("x_L", lower), ("x_U", upper)):
            if t.device != x.device:
                raise BoundInputError(f"device mismatch: {name} is on {t.device} but x is on {x.device}")
            t = t.to(x.dtype)
            try:
                shape = torch.broadcast_shapes(t.shape, x.shape)
            except RuntimeError:
                raise BoundInputError(f"{name} of shape {tuple(t.shape)} does not broadcast against x of shape "
                                      f"{tuple(x.shape)}") from None
            if shape != x.shape:
                raise BoundInputError(f"{name} of shape {tuple(t.shape)} would enlarge x of shape {tuple(x.shape)}")
            out.append(t.expand_as(x))
        return out[0], out[1]

    def to(self, *args, **kwargs) -> "PerturbationLpNorm":
        """A copy with its tensors (``eps``, ``x_L``, ``x_U``) moved as ``Tensor.to(*args, **kwargs)``."""
        def move(t):
            return t.to(*args, **kwargs) if isinstance(t, torch.Tensor) else t
        return PerturbationLpNorm(move(self.eps), math.inf, move(self.x_L), move(self.x_U))

    def __repr__(self) -> str:
        eps = self.eps if not isinstance(self.eps, torch.Tensor) or self.eps.numel() > 1 else self.eps.item()
        if not self.has_explicit_box:
            return f"PerturbationLpNorm(norm=inf, eps={eps})"
        return f"PerturbationLpNorm(norm=inf, eps={eps}, x_L={self.x_L}, x_U={self.x_U})"

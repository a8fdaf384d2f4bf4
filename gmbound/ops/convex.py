"""Non-decreasing convex activations: exp, Softplus, ELU (0 <= alpha <= 1) and CELU.

For a convex ``g`` every chord lies above ``g`` and every tangent below it, so on ``[l, u]`` the CROWN
step uses the chord through ``(l, g(l))`` and ``(u, g(u))`` as the upper line and the tangent at the
midpoint ``m = (l + u) / 2`` (slope: a subgradient ``g'(m)``) as the lower line, as CROWN and
auto_LiRPA do for exp. The interval step is ``[g(l), g(u)]`` (``g`` does not decrease).

PyTorch's softplus is not quite convex: where ``beta z > threshold`` it returns ``z`` itself, up to
``log1p(exp(-threshold)) / beta`` (about 2e-9 at the default threshold 20) below the convex
``log(1 + exp(beta z)) / beta``; ``SoftplusOp`` accounts for that switch.
"""
from __future__ import annotations

import math
import torch
import torch.nn.functional as F

from .base import UnsupportedLayerError
from .nonlinear import ElementwiseOp, Lines, _chord

Tensor = torch.Tensor


class ConvexOp(ElementwiseOp):
    """``y = f(z)`` with ``f`` non-decreasing and convex."""

    relaxation = "chord above, tangent at the midpoint below"

    def d1(self, z: Tensor) -> Tensor:
        """A subgradient of ``g`` at ``z`` (the slope of a tangent that lies below ``g``)."""
        raise NotImplementedError

    def convex_lines(self, g, l: Tensor, u: Tensor) -> Lines:
        """The chord of ``g`` above and its tangent at the midpoint below (``self.d1``: ``g``'s subgradient)."""
        up_s, up_b = _chord(g(l), g(u), l, u, self.d1(u), above=True)
        m = (l + u) / 2
        lo_s = self.d1(m)
        return lo_s, g(m) - lo_s * m, up_s, up_b

    def lines(self, l: Tensor, u: Tensor) -> Lines:
        return self.convex_lines(self.fn, l, u)


class ExpOp(ConvexOp):
    """``exp(z)``: the chord above, the tangent at the midpoint below."""

    def fn(self, z):
        return torch.exp(z)

    def d1(self, z):
        return torch.exp(z)


class SoftplusOp(ConvexOp):
    """``softplus(z) = g(z) = log(1 + exp(beta z)) / beta``, and ``z`` where ``beta z > threshold`` (PyTorch's).

    With ``t = threshold / beta``: ``[l, u]`` past ``t`` (``beta l > threshold``): ``f = z``, exact
    lines. Below (``beta u <= threshold``): ``f = g``, the chord and the midpoint tangent. Across
    ``t``: ``f <= g``, so the chord of ``g`` stays above; ``g - f = g(z) - z`` falls with ``z`` past
    ``t``, so the tangent of ``g`` lowered by ``g(t) - t`` (at most ``log1p(exp(-threshold)) / beta``)
    stays below. Interval: ``f`` rises except for its drop at ``t`` (from ``g(t)`` to ``t``).
    """

    relaxation = "chord above, tangent at the midpoint below (lowered across threshold by the step to z)"

    def __init__(self, module, where: str, beta: float = 1.0, threshold: float = 20.0):
        super().__init__(module, where)
        if not (math.isfinite(beta) and beta > 0):
            raise UnsupportedLayerError(f"{where}: Softplus with beta={beta!r}: gmbound bounds softplus with a finite "
                                        "beta > 0 (convex and increasing)")
        if math.isnan(threshold):
            raise UnsupportedLayerError(f"{where}: Softplus with threshold=nan: give a number")
        self.beta, self.threshold = float(beta), float(threshold)

    def fn(self, z):
        return F.softplus(z, self.beta, self.threshold)

    def smooth(self, z: Tensor) -> Tensor:
        """``g(z) = log(1 + exp(beta z)) / beta``, without the switch to ``z``."""
        return torch.logaddexp(torch.zeros_like(z), self.beta * z) / self.beta

    def d1(self, z):
        return torch.sigmoid(self.beta * z)

    def _sides(self, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """Entries past the switch (``f = z`` on all of ``[l, u]``) and across it (the same test as PyTorch's)."""
        past = self.beta * l > self.threshold
        return past, (self.beta * u > self.threshold) & ~past

    def range(self, l, u):
        past, across = self._sides(l, u)
        if not bool(across.any()):
            return self.fn(l), self.fn(u)
        t = torch.full_like(l, self.threshold / self.beta)
        # across: the infimum is f(l) or t (approached just past the switch), the maximum f(u) or g(t)
        lo = torch.where(across, torch.minimum(self.fn(l), t), self.fn(l))
        hi = torch.where(across, torch.maximum(self.fn(u), self.smooth(t)), self.fn(u))
        return lo, hi

    def lines(self, l, u):
        past, across = self._sides(l, u)
        lo_s, lo_b, up_s, up_b = self.convex_lines(self.smooth, l, u)
        if bool(across.any()):
            t = torch.full_like(l, self.threshold / self.beta)
            lo_b = torch.where(across, lo_b - (self.smooth(t) - t), lo_b)
        one, zero = torch.ones_like(l), torch.zeros_like(l)
        return (torch.where(past, one, lo_s), torch.where(past, zero, lo_b),
                torch.where(past, one, up_s), torch.where(past, zero, up_b))


class ELUOp(ConvexOp):
    """``elu(z) = z`` for ``z > 0``, ``alpha (exp(k z) - 1)`` for ``z <= 0``; ``k = 1`` (ELU) or ``1 / alpha`` (CELU).

    ELU is convex only for ``0 <= alpha <= 1`` (its slope jumps from ``alpha`` to 1 at 0); CELU is
    convex for every ``alpha > 0`` (its slope is continuous). Other alphas are refused.
    """

    def __init__(self, module, where: str, alpha: float = 1.0, continuous: bool = False):
        super().__init__(module, where)
        name = "CELU" if continuous else "ELU"
        if not math.isfinite(alpha) or (alpha <= 0 if continuous else not 0 <= alpha <= 1):
            allowed = "alpha > 0" if continuous else "0 <= alpha <= 1 (CELU is convex for every alpha > 0)"
            raise UnsupportedLayerError(f"{where}: {name} with alpha={alpha!r} is not convex and increasing; gmbound relaxes "
                             f"{name} with {allowed}")
        self.alpha, self.continuous = float(alpha), continuous
        self.k = 1.0 / self.alpha if continuous else 1.0

    def fn(self, z):
        return F.celu(z, self.alpha) if self.continuous else F.elu(z, self.alpha)

    def d1(self, z):
        # at z = 0 ELU's subgradients are [alpha, 1]: the left slope alpha is one of them
        return torch.where(z > 0, torch.ones_like(z), self.alpha * self.k * torch.exp(self.k * torch.clamp(z, max=0)))

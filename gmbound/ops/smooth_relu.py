"""Smooth ReLU-like activations: GELU (erf and tanh forms), SiLU (swish) and Mish.

Each ``f`` of this family has the same shape, and one relaxation serves them all:
- it falls to a single minimum at ``z*`` (< 0) and rises after it, so the interval step is exact:
  ``[min(f(l), f(u), f(clamp(z*, l, u))), max(f(l), f(u))]``;
- it is convex on ``[c_lo, c_hi]`` (around 0) and concave outside;
- it lies below ReLU: ``f(z) <= max(z, 0)``.

The constants ``z*``, ``c_lo`` and ``c_hi`` are the roots of ``f'`` and ``f''``, found once by
bisection in double precision from each class's ``d1``.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import torch
import torch.nn.functional as F

from .nonlinear import ElementwiseOp, Lines, _chord

Tensor = torch.Tensor


def _root(g: Callable[[float], float], a: float, b: float) -> float:
    """The root of ``g`` on ``[a, b]`` (``g(a)``, ``g(b)`` of opposite signs), by bisection to double precision."""
    negative_at_a = g(a) < 0
    for _ in range(200):
        m = (a + b) / 2
        if m in (a, b):
            break
        if (g(m) < 0) == negative_at_a:
            a = m
        else:
            b = m
    return (a + b) / 2


class SmoothReLUOp(ElementwiseOp):
    """``f`` with one minimum, convex on ``[c_lo, c_hi]``, concave outside, ``f <= relu`` (module docstring).

    Inside the convex part: the chord above, the midpoint tangent below; inside one concave part:
    the chord below, the midpoint tangent above. Otherwise, below: the tangent at the midpoint
    clamped into the convex part, lowered by its excess at ``l`` or ``u`` (``f`` minus a tangent of
    the convex part is concave on the concave parts, so its minimum there is at ``l`` or ``u``);
    above: ``f <= relu``, so ReLU's chord when ``l < 0 < u``, ``y = z`` when ``l >= 0``, and
    ``max(f(l), f(u))`` when ``u <= 0``. Sound, and looser than auto_LiRPA's GELU bounds across the
    inflection points.
    """

    relaxation = "chord / midpoint tangent; across inflections a lowered tangent and ReLU's upper line"

    def d1(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    @classmethod
    @functools.cache
    def shape(cls) -> tuple[float, float, float]:
        """``(z*, c_lo, c_hi)``: the minimiser and the ends of the convex part."""
        op = cls(None, "shape")

        def d1(z: float) -> float:
            return float(op.d1(torch.tensor(z, dtype=torch.float64)))

        def d2(z: float) -> float:
            t = torch.tensor(z, dtype=torch.float64, requires_grad=True)
            (g,) = torch.autograd.grad(op.d1(t), t)
            return float(g)

        argmin = _root(d1, -4.0, 0.0)
        return argmin, _root(d2, -6.0, argmin), _root(d2, 0.0, 6.0)

    def range(self, l, u):
        argmin = self.shape()[0]
        f_l, f_u = self.fn(l), self.fn(u)
        lowest = self.fn(torch.clamp(torch.full_like(l, argmin), l, u))
        return torch.minimum(torch.minimum(f_l, f_u), lowest), torch.maximum(f_l, f_u)

    def lines(self, l, u) -> Lines:
        _, c_lo, c_hi = self.shape()
        one, zero = torch.ones_like(l), torch.zeros_like(l)
        f_l, f_u = self.fn(l), self.fn(u)
        m = (l + u) / 2
        mid_s = self.d1(m)
        mid_b = self.fn(m) - mid_s * m
        convex = (l >= c_lo) & (u <= c_hi)
        concave = (l >= c_hi) | (u <= c_lo)
        chord_up = _chord(f_l, f_u, l, u, self.d1(u), above=True)
        chord_lo = _chord(f_l, f_u, l, u, self.d1(u), above=False)
        # mixed: a tangent of the convex part, lowered by its excess at the endpoints
        t = torch.clamp(m, c_lo, c_hi)
        t_s = self.d1(t)
        t_b = self.fn(t) - t_s * t
        excess = torch.clamp(torch.maximum(t_s * l + t_b - f_l, t_s * u + t_b - f_u), min=0)
        mixed_lo_b = t_b - excess
        # mixed, above: f <= relu
        relu_s = torch.where(u > 0, u / torch.where(u - l > 0, u - l, one), zero)
        relu_b = -relu_s * l
        m_up_s = torch.where(l >= 0, one, torch.where(u <= 0, zero, relu_s))
        m_up_b = torch.where(l >= 0, zero, torch.where(u <= 0, torch.maximum(f_l, f_u), relu_b))
        lo_s = torch.where(convex, mid_s, torch.where(concave, chord_lo[0], t_s))
        lo_b = torch.where(convex, mid_b, torch.where(concave, chord_lo[1], mixed_lo_b))
        up_s = torch.where(convex, chord_up[0], torch.where(concave, mid_s, m_up_s))
        up_b = torch.where(convex, chord_up[1], torch.where(concave, mid_b, m_up_b))
        return lo_s, lo_b, up_s, up_b


_SQRT2 = math.sqrt(2.0)


class GELUOp(SmoothReLUOp):
    """``gelu(z) = z Phi(z)`` (the exact erf form): ``z* = -0.7518``, convex on ``[-sqrt 2, sqrt 2]``."""

    def fn(self, z):
        return z * 0.5 * (1 + torch.erf(z / _SQRT2))

    def d1(self, z):
        return 0.5 * (1 + torch.erf(z / _SQRT2)) + z * torch.exp(-z * z / 2) / math.sqrt(2 * math.pi)


_GELU_K, _GELU_C = math.sqrt(2.0 / math.pi), 0.044715


class GELUTanhOp(SmoothReLUOp):
    """``gelu(z) ~ z (1 + tanh(k (z + c z^3))) / 2`` (``approximate='tanh'``).

    ``k = sqrt(2 / pi)``, ``c = 0.044715``: ``z* = -0.7525``, convex on ``[-1.4185, 1.4185]``.
    """

    def fn(self, z):
        return F.gelu(z, approximate="tanh")

    def d1(self, z):
        t = torch.tanh(_GELU_K * (z + _GELU_C * z ** 3))
        return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * _GELU_K * (1 + 3 * _GELU_C * z * z)


class SiLUOp(SmoothReLUOp):
    """``silu(z) = z sigmoid(z)`` (swish): ``z* = -1.2785``, convex on ``[-2.3994, 2.3994]``."""

    def fn(self, z):
        return F.silu(z)

    def d1(self, z):
        s = torch.sigmoid(z)
        return s * (1 + z * (1 - s))


class MishOp(SmoothReLUOp):
    """``mish(z) = z tanh(softplus(z))``: ``z* = -1.1924``, convex on ``[-2.2564, 1.4905]``."""

    def fn(self, z):
        return F.mish(z)

    def d1(self, z):
        t = torch.tanh(F.softplus(z))
        return t + z * (1 - t * t) * torch.sigmoid(z)

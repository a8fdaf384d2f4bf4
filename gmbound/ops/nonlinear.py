"""Element-wise nonlinear activations: S-shaped and piecewise-linear (others: ``convex``, ``smooth_relu``).

Each op bounds ``y = f(z)`` entry by entry. Its interval step is the exact range of ``f`` over
``[l, u]``; its CROWN step relaxes ``f`` on ``[l, u]`` by two lines, ``a_L z + b_L <= f(z) <=
a_U z + b_U``, and back-substitutes them (``prims.relaxation_backward``: the lower line for
positive entries of Lambda, the upper line for negative ones). The class docstrings say which
lines are used; ``relaxation`` (a short name of it) is listed in the README's table of operations.

Two rules keep the lines sound in floating point: a chord is placed through the endpoint that
lies farther on the safe side (``_chord``), and a tangent point found by bisection is taken at the
end of the bracket where the tangent is known to be valid (``_tangent_through``).
"""
from __future__ import annotations

import math
from typing import ClassVar, Optional

import torch
from torch.nn.functional import leaky_relu

from ..reference import primitives as _ref
from .base import BoundOp, Interval, materialise

Tensor = torch.Tensor
Lines = tuple[Tensor, Tensor, Tensor, Tensor]  # lower slope, lower intercept, upper slope, upper intercept


def _chord(f_l: Tensor, f_u: Tensor, l: Tensor, u: Tensor, slope_if_point: Tensor,
           above: bool) -> tuple[Tensor, Tensor]:
    """The line through ``(l, f_l)`` and ``(u, f_u)`` (``slope_if_point`` where ``l == u``).

    Its intercept is the max (``above``: an upper line) or min over both endpoints, so rounding
    in the slope cannot put it on the wrong side of either endpoint.
    """
    width = u - l
    wide = width > 0
    slope = torch.where(wide, (f_u - f_l) / torch.where(wide, width, torch.ones_like(width)), slope_if_point)
    b_l, b_u = f_l - slope * l, f_u - slope * u
    return slope, (torch.maximum(b_l, b_u) if above else torch.minimum(b_l, b_u))


class ElementwiseOp(BoundOp):
    """``y = f(z)`` entry by entry; subclasses give ``fn``, ``range`` (interval) and ``lines`` (relaxation)."""

    kind = "nonlinear"
    relaxation: ClassVar[str] = ""

    def fn(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def range(self, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """Exact bounds of ``f`` over ``[l, u]`` (by default: ``f`` is non-decreasing)."""
        return self.fn(l), self.fn(u)

    def lines(self, l: Tensor, u: Tensor) -> Lines:
        """``(a_L, b_L, a_U, b_U)`` with ``a_L z + b_L <= f(z) <= a_U z + b_U`` on ``[l, u]``."""
        raise NotImplementedError

    def forward(self, a: Tensor, update_running_stats: bool = True) -> Tensor:
        return self.fn(a)  # never in place: the input may feed another branch too

    def interval(self, prims, a: Interval) -> Interval:
        return Interval(*self.range(*materialise(a, prims)))

    def backward(self, prims, lam, in_shapes, out_shape, pre):
        lam_in, term = prims.relaxation_backward(lam, *self.lines(*pre))
        return [lam_in], term


# ============================================================================ S-shaped: tanh, sigmoid
class SShapedOp(ElementwiseOp):
    """An increasing function, convex below 0 and concave above (tanh, sigmoid): CROWN's relaxation.

    ``[l, u]`` on the convex side (``u <= 0``): the chord above, the tangent at the midpoint
    below; on the concave side (``l >= 0``): the chord below, the tangent at the midpoint above.
    Across 0: the chord where it is a valid bound (below when ``f'(l)`` is at least its slope,
    above when ``f'(u)`` is), else the tangent that passes through the far endpoint (below: the
    tangent at ``d <= 0`` through ``(u, f(u))``; above: at ``d >= 0`` through ``(l, f(l))``), its
    point ``d`` found by bisection (with the implicit-function gradient ``dd/dl``, ``dd/du``),
    and replaced by the midpoint ``m`` where ``m`` lies beyond ``d`` (auto_LiRPA's smoothing:
    below, ``m <= d``; above, ``m >= d``; any tangent point between the interval's end and ``d``
    gives a valid line). These are the bounds of CROWN (Zhang et al., 2018) and auto_LiRPA's
    non-optimised ones.
    """

    relaxation = "CROWN tangent / chord lines (tangent points by bisection)"
    # Halvings of the bracket: to below the dtype's resolution (the valid end is kept either way)
    BISECT_STEPS = {torch.float64: 56, torch.float32: 28}

    def d1(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def d2(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def _tangent(self, t: Tensor) -> tuple[Tensor, Tensor]:
        slope = self.d1(t)
        return slope, self.fn(t) - slope * t

    def _tangent_through(self, far: Tensor, lo: Tensor, hi: Tensor, valid_high: bool) -> Tensor:
        """The tangent point ``d`` in ``[lo, hi]`` whose tangent passes through ``(far, f(far))``.

        ``F(d) = f(d) + f'(d) (far - d) - f(far)`` is monotone on the bracket; the returned point
        lies on the valid side of the root (``valid_high``: at or above it). Its value comes from
        bisection without gradient; its gradient is the implicit one, ``-F_far / F_d``.
        """
        with torch.no_grad():
            far_ = far.detach()
            f_far = self.fn(far_)
            a, b = lo.detach().clone(), hi.detach().clone()
            # F increases on both brackets (f'' (far - d) >= 0 there): F(a) < 0 <= F(b) throughout
            for _ in range(self.BISECT_STEPS.get(far_.dtype, 16)):
                m = (a + b) / 2
                F = self.fn(m) + self.d1(m) * (far_ - m) - f_far
                go_high = F < 0  # the root lies above m
                a, b = torch.where(go_high, m, a), torch.where(go_high, b, m)
            d0 = b if valid_high else a
        # implicit gradient: F(d(far), far) = 0 -> dd/dfar = -(f'(d) - f'(far)) / (f''(d) (far - d))
        F_d = (self.d2(d0) * (far_ - d0))
        F_d = torch.where(F_d.abs() > 1e-12, F_d, torch.full_like(F_d, 1e-12))
        F_far = self.fn(d0) + self.d1(d0) * (far - d0) - self.fn(far)  # value ~0, gradient F_far . dfar
        step = F_far / F_d
        return d0 - (step - step.detach())

    def lines(self, l: Tensor, u: Tensor) -> Lines:
        f_l, f_u = self.fn(l), self.fn(u)
        d1_l, d1_u = self.d1(l), self.d1(u)
        mid_slope, mid_icpt = self._tangent((l + u) / 2)
        chord_lo = _chord(f_l, f_u, l, u, d1_u, above=False)
        chord_up = _chord(f_l, f_u, l, u, d1_u, above=True)
        neg, pos = u <= 0, l >= 0
        cross = ~(neg | pos)
        k = chord_up[0]
        zero = torch.zeros_like(l)
        # across 0: the tangent points (bisection only where they are needed; elsewhere any bracket)
        need_lo = cross & (k > d1_l)
        need_up = cross & (k > d1_u)
        lo_slope, lo_icpt = chord_lo
        up_slope, up_icpt = chord_up
        m = (l + u) / 2
        if bool(need_lo.any()):
            d = self._tangent_through(u, torch.where(need_lo, l, zero - 1), zero, valid_high=False)
            # auto_LiRPA's smoothing: the midpoint's tangent when it lies left of d (then m <= d <= 0: valid)
            d = torch.where(d >= m, m, d)
            t_slope, t_icpt = self._tangent(torch.where(need_lo, d, zero))
            lo_slope, lo_icpt = torch.where(need_lo, t_slope, lo_slope), torch.where(need_lo, t_icpt, lo_icpt)
        if bool(need_up.any()):
            d = self._tangent_through(l, zero, torch.where(need_up, u, zero + 1), valid_high=True)
            d = torch.where(d < m, m, d)  # mirrored: 0 <= d <= m
            t_slope, t_icpt = self._tangent(torch.where(need_up, d, zero))
            up_slope, up_icpt = torch.where(need_up, t_slope, up_slope), torch.where(need_up, t_icpt, up_icpt)
        # convex side: tangent below; concave side: tangent above
        lo_slope, lo_icpt = torch.where(neg, mid_slope, lo_slope), torch.where(neg, mid_icpt, lo_icpt)
        up_slope, up_icpt = torch.where(pos, mid_slope, up_slope), torch.where(pos, mid_icpt, up_icpt)
        return lo_slope, lo_icpt, up_slope, up_icpt


class TanhOp(SShapedOp):
    """``tanh(z)``. """ + SShapedOp.__doc__

    def fn(self, z):
        return torch.tanh(z)

    def d1(self, z):
        return 1 - torch.tanh(z) ** 2

    def d2(self, z):
        t = torch.tanh(z)
        return -2 * t * (1 - t * t)


class SigmoidOp(SShapedOp):
    """``sigmoid(z)``. """ + SShapedOp.__doc__

    def fn(self, z):
        return torch.sigmoid(z)

    def d1(self, z):
        s = torch.sigmoid(z)
        return s * (1 - s)

    def d2(self, z):
        s = torch.sigmoid(z)
        return s * (1 - s) * (1 - 2 * s)


# ============================================================================ piecewise linear
class LeakyReLUOp(ElementwiseOp):
    """``z`` for ``z >= 0``, ``a z`` below (``abs`` is ``a = -1``); any slope ``a``.

    Interval: the range over ``{l, u}`` and 0 when ``0`` lies inside. Stable entries are linear.
    Unstable ones (``l < 0 < u``), ``a <= 1`` (convex): the chord above, and below the line
    through 0 with slope 1 or ``a``, chosen adaptively as auto_LiRPA does (1 when the chord's slope
    exceeds 1/2 for ``a >= 0``, ``(1 + a) / 2`` for ``a < 0``: for ``abs``, 1 when ``u > -l``).
    ``a > 1`` (concave): the chord below and the line through 0 with slope 1 or ``a`` above.
    (For ``a`` between -1 and 0, and below -1 or above 1, auto_LiRPA has no LeakyReLU.)

    ``0 <= a <= 1`` (the usual leaky ReLU): the same lines from the ReLU relaxation
    (``prims.relu_backward(..., negative_slope=a)``), so the compiled ReLU kernels run it, fused
    with the Linear / Conv2d below as for a ReLU.
    """

    relaxation = "chord, and an adaptive line through 0 (slope 1 or a)"

    def __init__(self, module, where: str, negative_slope: float = 0.01):
        super().__init__(module, where)
        self.slope = float(negative_slope)

    def fn(self, z):
        return torch.where(z >= 0, z, z * self.slope)

    def range(self, l, u):
        if self.relu_slope() is not None:  # non-decreasing: one fused pass per bound (a training's hot path)
            return leaky_relu(l, self.slope), leaky_relu(u, self.slope)
        f_l, f_u = self.fn(l), self.fn(u)
        lo, hi = torch.minimum(f_l, f_u), torch.maximum(f_l, f_u)
        cross = (l < 0) & (u > 0)
        zero = torch.zeros_like(lo)
        return torch.where(cross, torch.minimum(lo, zero), lo), torch.where(cross, torch.maximum(hi, zero), hi)

    def relu_slope(self) -> Optional[float]:
        return self.slope if 0.0 <= self.slope <= 1.0 else None

    def backward(self, prims, lam, in_shapes, out_shape, pre):
        if self.relu_slope() is None:
            return super().backward(prims, lam, in_shapes, out_shape, pre)
        lam_in, term = prims.relu_backward(lam, *pre, negative_slope=self.slope)
        return [lam_in], term

    def lines(self, l, u):
        a = self.slope
        if self.relu_slope() is not None:  # the ReLU kernels' relaxation (what ``backward`` uses)
            lo_s, up_s, up_b = _ref.relu_relaxation(l, u, a)
            return lo_s, torch.zeros_like(l), up_s, up_b
        one, zero = torch.ones_like(l), torch.zeros_like(l)
        f_l, f_u = self.fn(l), self.fn(u)
        neg, pos = u <= 0, l >= 0
        cross = ~(neg | pos)
        convex = a <= 1
        chord = _chord(f_l, f_u, l, u, one, above=convex)
        threshold = (1 + a) / 2  # a < 0 when convex here: 0 <= a <= 1 took the ReLU relaxation above
        pick_one = chord[0] > threshold if convex else u > -l
        origin_slope = torch.where(pick_one, one, one * a)
        if convex:
            lo_s, lo_b, up_s, up_b = origin_slope, zero, chord[0], chord[1]
        else:
            lo_s, lo_b, up_s, up_b = chord[0], chord[1], origin_slope, zero
        stable_s = torch.where(pos, one, one * a)
        lo_s, up_s = torch.where(cross, lo_s, stable_s), torch.where(cross, up_s, stable_s)
        lo_b, up_b = torch.where(cross, lo_b, zero), torch.where(cross, up_b, zero)
        return lo_s, lo_b, up_s, up_b


class AbsOp(LeakyReLUOp):
    """``|z|``: LeakyReLU with slope -1, except below across 0, where ``y >= 0`` (auto_LiRPA's CROWN choice).

    Above: the chord. Stable entries: ``z`` or ``-z``.
    """

    relaxation = "chord above; y >= 0 below across 0 (auto_LiRPA's)"

    def __init__(self, module, where: str):
        super().__init__(module, where, -1.0)

    def fn(self, z):
        return z.abs()

    def lines(self, l, u):
        lo_s, lo_b, up_s, up_b = super().lines(l, u)
        cross = (l < 0) & (u > 0)
        return torch.where(cross, torch.zeros_like(lo_s), lo_s), lo_b, up_s, up_b


class SquareOp(ElementwiseOp):
    """``z * z`` (``x * x`` of one tensor, ``x ** 2``, ``torch.square``): convex.

    Interval: ``[0, max(l^2, u^2)]`` across 0, else between the squares. Above: the chord; below:
    for ``x * x``, the tangent at the point of ``[l, u]`` nearest 0 (``y >= 0`` across 0), as
    auto_LiRPA's ``BoundSqr``; for ``x ** 2`` / ``square`` (``midpoint=True``), the tangent at the
    midpoint, as auto_LiRPA's ``BoundPow``.
    """

    relaxation = "chord above; tangent below (at the midpoint, or for x * x at the point nearest 0)"

    def __init__(self, module, where: str, midpoint: bool = False):
        super().__init__(module, where)
        self.midpoint = midpoint

    def fn(self, z):
        return z * z

    def range(self, l, u):
        sl, su = l * l, u * u
        hi = torch.maximum(sl, su)
        lo = torch.where((l < 0) & (u > 0), torch.zeros_like(sl), torch.minimum(sl, su))
        return lo, hi

    def lines(self, l, u):
        up_s, up_b = _chord(l * l, u * u, l, u, 2 * u, above=True)
        t = (l + u) / 2 if self.midpoint else torch.relu(l) - torch.relu(-u)
        return 2 * t, -t * t, up_s, up_b


class ClampOp(ElementwiseOp):
    """``clamp(z, lo, hi)`` (``hardtanh``, ``relu6``; ``lo`` or ``hi`` may be None: unbounded).

    Interval: ``[clamp(l), clamp(u)]`` (non-decreasing). Relaxation by auto_LiRPA's cases:
    constant or identity where ``[l, u]`` meets one piece; across ``lo`` only: the chord from
    ``(l, lo)`` to ``(u, u)`` above and, adaptively, ``y = z`` (chord slope > 1/2) or ``y = lo``
    below; across ``hi`` only, mirrored; across both: above, the line through ``(l, lo)`` and
    ``(hi, hi)``, below, the line through ``(lo, lo)`` and ``(u, hi)``.
    """

    relaxation = "chords, and adaptive y = z / y = lo (hi) lines (auto_LiRPA's cases)"

    def __init__(self, module, where: str, lo: Optional[float], hi: Optional[float]):
        super().__init__(module, where)
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"{where}: clamp with min {lo} > max {hi}")
        self.lo, self.hi = (None if lo is None else float(lo)), (None if hi is None else float(hi))

    def fn(self, z):
        return torch.clamp(z, self.lo, self.hi)

    def lines(self, l, u):
        one, zero = torch.ones_like(l), torch.zeros_like(l)
        lo = -math.inf if self.lo is None else self.lo
        hi = math.inf if self.hi is None else self.hi
        f_l, f_u = self.fn(l), self.fn(u)
        # start from the stable cases: constant below lo / above hi, identity between
        ident = (l >= lo) & (u <= hi)
        lo_s = up_s = torch.where(ident, one, zero)
        lo_b = up_b = torch.where(ident, zero, torch.where(u <= lo, zero + lo, zero + hi))
        across_lo = (l < lo) & (u > lo) & (u <= hi)
        across_hi = (l >= lo) & (l < hi) & (u > hi)
        both = (l < lo) & (u > hi)
        if self.lo is not None and bool(across_lo.any()):
            s, b = _chord(f_l, f_u, l, u, one, above=True)
            take_z = s > 0.5
            up_s, up_b = torch.where(across_lo, s, up_s), torch.where(across_lo, b, up_b)
            lo_s = torch.where(across_lo, torch.where(take_z, one, zero), lo_s)
            lo_b = torch.where(across_lo, torch.where(take_z, zero, zero + lo), lo_b)
        if self.hi is not None and bool(across_hi.any()):
            s, b = _chord(f_l, f_u, l, u, one, above=False)
            take_z = s > 0.5
            lo_s, lo_b = torch.where(across_hi, s, lo_s), torch.where(across_hi, b, lo_b)
            up_s = torch.where(across_hi, torch.where(take_z, one, zero), up_s)
            up_b = torch.where(across_hi, torch.where(take_z, zero, zero + hi), up_b)
        if self.lo is not None and self.hi is not None and bool(both.any()):
            lo_t, hi_t = zero + lo, zero + hi
            s_up, b_up = _chord(lo_t, hi_t, torch.where(both, l, lo_t - 1), hi_t, one, above=True)
            s_lo, b_lo = _chord(lo_t, hi_t, lo_t, torch.where(both, u, hi_t + 1), one, above=False)
            up_s, up_b = torch.where(both, s_up, up_s), torch.where(both, b_up, up_b)
            lo_s, lo_b = torch.where(both, s_lo, lo_s), torch.where(both, b_lo, lo_b)
        return lo_s, lo_b, up_s, up_b

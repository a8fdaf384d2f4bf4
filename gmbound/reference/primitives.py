"""Pure-PyTorch bound primitives: the oracle every compiled kernel is tested against.

Shapes (per-sample layer shapes written ``S``):

* interval bounds ``lower``/``upper``: ``[N, B, *S]``: radius axis first;
* CROWN coefficients ``lam`` (Lambda): ``[N or 1, B, K, *S]``: one row per specification row,
  a leading 1 while Lambda is still the same for every radius (before the first ReLU);
* bias / bound terms: ``[N or 1, B, K]``.

Every function here is differentiable with the ordinary autograd of the ops it uses.
Readable first, fast second: the compiled engine provides fused versions with the same
contracts (``gmbound.engine``).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


# ----------------------------------------------------------------------------- input box
def input_box(x: torch.Tensor, radii: torch.Tensor, x_min: Optional[torch.Tensor],
              x_max: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The clipped L-inf boxes ``[max(x - r, x_min), min(x + r, x_max)]`` for all radii.

    ``x``: ``[B, *S]``; ``radii``: ``[N, B]``; returns ``[N, B, *S]`` twice.
    """
    r = radii.reshape(radii.shape + (1,) * (x.dim() - 1))  # [N, B, 1, ...]
    lower, upper = x - r, x + r
    if x_min is not None:
        lower = torch.maximum(lower, x_min)
    if x_max is not None:
        upper = torch.minimum(upper, x_max)
    return lower, upper


def relu_bounds(lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Interval ReLU: ReLU is monotone, so it maps ``[l, u]`` to ``[relu(l), relu(u)]``.

    ``torch.relu``, not ``clamp_min(0)``: its gradient at 0 is 0 in every torch, while clamp_min's
    passes the gradient at the boundary up to torch 2.11 and not from 2.14 on. The compiled kernels
    (csrc/bound_math.h) use relu's convention.
    """
    return torch.relu(lower), torch.relu(upper)


def _centre_radius(lower, upper, relu_input: bool):
    if relu_input:
        lower, upper = relu_bounds(lower, upper)
    return (upper + lower) / 2, (upper - lower) / 2


# ----------------------------------------------------------------------------- IBP steps
def interval_linear(lower: torch.Tensor, upper: torch.Tensor, weight: torch.Tensor,
                    bias: Optional[torch.Tensor], relu_input: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """IBP through ``z = W a + b`` (``a = relu(input)`` when ``relu_input``); ``[N, B, in] -> [N, B, out]``.

    Centre ``c' = W c + b`` and radius ``rho' = |W| rho``.
    """
    c, rho = _centre_radius(lower, upper, relu_input)
    c_out = F.linear(c, weight, bias)
    rho_out = F.linear(rho, weight.abs())
    return c_out - rho_out, c_out + rho_out


def interval_conv2d(lower: torch.Tensor, upper: torch.Tensor, weight: torch.Tensor,
                    bias: Optional[torch.Tensor], stride, padding, dilation,
                    relu_input: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """IBP through a convolution; ``[N, B, C, H, W] -> [N, B, C', H', W']``.

    The radius axis is folded into the batch so one convolution serves all radii.
    """
    c, rho = _centre_radius(lower, upper, relu_input)
    n, b = c.shape[:2]
    c_out = F.conv2d(c.flatten(0, 1), weight, bias, stride, padding, dilation)
    rho_out = F.conv2d(rho.flatten(0, 1), weight.abs(), None, stride, padding, dilation)
    c_out, rho_out = c_out.unflatten(0, (n, b)), rho_out.unflatten(0, (n, b))
    return c_out - rho_out, c_out + rho_out


def _channel_view(v: torch.Tensor, n_spatial: int) -> torch.Tensor:
    return v.reshape((-1,) + (1,) * n_spatial)


def interval_channel_affine(lower: torch.Tensor, upper: torch.Tensor, scale: torch.Tensor,
                            shift: torch.Tensor, relu_input: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """IBP through ``z = s * a + t`` per channel (channel axis 2 of ``[N, B, C, ...]``)."""
    c, rho = _centre_radius(lower, upper, relu_input)
    n_spatial = c.dim() - 3
    s, t = _channel_view(scale, n_spatial), _channel_view(shift, n_spatial)
    c_out, rho_out = s * c + t, s.abs() * rho
    return c_out - rho_out, c_out + rho_out


def interval_avg_pool2d(lower: torch.Tensor, upper: torch.Tensor, kernel, stride, padding, divisor: int,
                        relu_input: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """IBP through average pooling (zero padding counted, windows summed and divided by ``divisor``).

    Pooling is linear with non-negative weights, hence monotone: ``[pool(l), pool(u)]`` is exact.
    """
    if relu_input:
        lower, upper = relu_bounds(lower, upper)
    n, b = lower.shape[:2]

    def pool(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(t.flatten(0, 1), kernel, stride, padding, False, True, divisor).unflatten(0, (n, b))

    return pool(lower), pool(upper)


# ----------------------------------------------------------------------------- CROWN steps
def relu_relaxation(lower: torch.Tensor, upper: torch.Tensor,
                    negative_slope: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Linear relaxation of ``relu`` on ``[l, u]``: ``alpha z <= relu(z) <= s z + t``.

    inactive (u <= 0): alpha = s = t = 0; active (l >= 0): alpha = s = 1, t = 0;
    unstable: ``s = u / (u - l)``, ``t = -s l`` (the chord), and the adaptive lower slope of
    CROWN-IBP, ``alpha = 1 if u > -l else 0`` (the line of least area). ``u - l > 0`` holds
    whenever the neuron is unstable, so no guard term is needed and active slopes are exactly 1.

    ``negative_slope`` ``a`` in ``[0, 1]``: the same for ``leaky_relu(z) = max(z, a z) = a z + (1 - a)
    relu(z)``, convex: slopes ``a + (1 - a) s`` (``a`` when inactive), intercept ``(1 - a) t``, and
    ``alpha = 1`` where the chord's slope exceeds 1/2 (``u > (2a - 1) l``), else ``a`` (auto_LiRPA's
    adaptive choice). At ``a = 0`` every term reduces exactly to ReLU's.
    """
    if not 0.0 <= negative_slope <= 1.0:
        raise ValueError(f"negative_slope must be in [0, 1] (a convex leaky ReLU), got {negative_slope!r}")
    a = negative_slope
    active = lower >= 0
    unstable = (lower < 0) & (upper > 0)
    denom = torch.where(unstable, upper - lower, torch.ones_like(upper))
    chord = torch.where(unstable, upper / denom, torch.zeros_like(upper))
    upper_slope = torch.where(active, torch.ones_like(upper), a + (1 - a) * chord)
    upper_intercept = -((1 - a) * chord) * lower  # zero wherever the chord is zero
    one = active | (unstable & (upper > (2 * a - 1) * lower))
    alpha = torch.where(one, torch.ones_like(upper), torch.full_like(upper, a))
    return alpha, upper_slope, upper_intercept


def relu_backward(lam: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor,
                  negative_slope: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Back-substitute a *lower* bound ``lam . relu(z)`` into a linear function of ``z``.

    Positive entries of Lambda take the lower line, negative ones the upper line:
    ``lam_z = lam^+ alpha + lam^- s``, bias ``sum(lam^- t)``.
    ``lam``: ``[N or 1, B, K, *S]``, ``lower``/``upper``: ``[N, B, *S]``. ``negative_slope``:
    through ``leaky_relu`` instead (``relu_relaxation``).
    """
    alpha, slope, intercept = (v.unsqueeze(2) for v in relu_relaxation(lower, upper, negative_slope))
    lam_pos, lam_neg = torch.relu(lam), -torch.relu(-lam)  # no gradient at lam = 0 (see relu_bounds)
    lam_z = lam_pos * alpha + lam_neg * slope
    bias = (lam_neg * intercept).flatten(3).sum(-1)
    return lam_z, bias


def relaxation_backward(lam: torch.Tensor, lower_slope: torch.Tensor, lower_intercept: torch.Tensor,
                        upper_slope: torch.Tensor, upper_intercept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Back-substitute a *lower* bound ``lam . f(z)`` through element-wise lines ``a_L z + b_L <= f(z) <= a_U z + b_U``.

    Positive entries of Lambda take the lower line, negative ones the upper line:
    ``lam_z = lam^+ a_L + lam^- a_U``, bias ``sum(lam^+ b_L + lam^- b_U)``. The lines are
    ``[N, B, *S]``, Lambda ``[N or 1, B, K, *S]``; returns ``[N, B, K, *S]`` and ``[N, B, K]``.
    """
    a_l, b_l, a_u, b_u = (v.unsqueeze(2) for v in (lower_slope, lower_intercept, upper_slope, upper_intercept))
    lam_pos, lam_neg = torch.relu(lam), -torch.relu(-lam)
    lam_z = lam_pos * a_l + lam_neg * a_u
    bias = (lam_pos * b_l + lam_neg * b_u).flatten(3).sum(-1)
    return lam_z, bias


def linear_backward(lam: torch.Tensor, weight: torch.Tensor,
                    bias: Optional[torch.Tensor]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``lam . (W a + b) = (lam W) . a + lam . b``; ``[.., K, out] -> [.., K, in]``."""
    lam_in = lam.matmul(weight)
    bias_term = lam.matmul(bias) if bias is not None else None
    return lam_in, bias_term


def conv2d_backward(lam: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                    stride, padding, dilation,
                    output_padding) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Through a convolution by its transpose; ``[M, B, K, C', H', W'] -> [M, B, K, C, H, W]``."""
    lead = lam.shape[:3]
    lam_in = F.conv_transpose2d(lam.flatten(0, 2), weight, None, stride, padding,
                                output_padding, 1, dilation).unflatten(0, lead)
    bias_term = lam.sum((-2, -1)).matmul(bias) if bias is not None else None
    return lam_in, bias_term


def channel_affine_backward(lam: torch.Tensor, scale: torch.Tensor,
                            shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Through ``z = s * a + t`` per channel (channel axis 3 of ``[M, B, K, C, ...]``)."""
    n_spatial = lam.dim() - 4
    lam_in = lam * _channel_view(scale, n_spatial)
    bias_term = lam.flatten(4).sum(-1).matmul(shift) if n_spatial else lam.matmul(shift)
    return lam_in, bias_term


def avg_pool2d_backward(lam: torch.Tensor, kernel, stride, padding, divisor: int,
                        output_padding) -> torch.Tensor:
    """Through average pooling by its adjoint: a depthwise transposed convolution with weights ``1 / divisor``.

    ``[M, B, K, C, H', W'] -> [M, B, K, C, H, W]``; pooling has no bias.
    """
    lead, channels = lam.shape[:3], lam.shape[3]
    weight = torch.full((channels, 1) + tuple(kernel), 1.0 / divisor, dtype=lam.dtype, device=lam.device)
    return F.conv_transpose2d(lam.flatten(0, 2), weight, None, stride, padding, output_padding,
                              channels).unflatten(0, lead)


def concretize(lam: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor,
               relu_input: bool) -> torch.Tensor:
    """Lower bound of ``lam . a`` over the box ``a in [l, u]`` (``relu`` of it when ``relu_input``).

    ``lam^+ l + lam^- u = lam . c - |lam| . rho``; returns ``[N, B, K]``.
    """
    c, rho = _centre_radius(lower, upper, relu_input)
    lam_flat = lam.flatten(3)                               # [M, B, K, D]
    c_flat, rho_flat = c.flatten(2).unsqueeze(-1), rho.flatten(2).unsqueeze(-1)  # [N, B, D, 1]
    return (lam_flat.matmul(c_flat) - lam_flat.abs().matmul(rho_flat)).squeeze(-1)


# ----------------------------------------------------------------------------- max pooling, products
def _window_geometry(kernel, stride, padding, dilation, in_hw, out_hw, device):
    """Per (window tap, output position) the flat input index ``row * W + col`` it reads (``[kk, P]``)."""
    kh, kw = kernel
    oh, ow = out_hw
    ki = torch.arange(kh, device=device).repeat_interleave(kw)
    kj = torch.arange(kw, device=device).repeat(kh)
    oi = torch.arange(oh, device=device).repeat_interleave(ow)
    oj = torch.arange(ow, device=device).repeat(oh)
    rows = oi.unsqueeze(0) * stride[0] - padding[0] + ki.unsqueeze(1) * dilation[0]
    cols = oj.unsqueeze(0) * stride[1] - padding[1] + kj.unsqueeze(1) * dilation[1]
    return rows.clamp(0, in_hw[0] - 1) * in_hw[1] + cols.clamp(0, in_hw[1] - 1)


def interval_max_pool2d(lower: torch.Tensor, upper: torch.Tensor, kernel, stride, padding,
                        dilation) -> tuple[torch.Tensor, torch.Tensor]:
    """IBP through max pooling: ``max`` is non-decreasing in every argument, so ``[pool(l), pool(u)]`` is exact."""
    n, b = lower.shape[:2]

    def pool(t: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(t.flatten(0, 1), kernel, stride, padding, dilation).unflatten(0, (n, b))

    return pool(lower), pool(upper)


def max_pool2d_relaxation(lower: torch.Tensor, upper: torch.Tensor, kernel, stride, padding, dilation,
                          out_hw) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """auto_LiRPA's (non-optimised) relaxation of each max-pooling window's max, ``x_i* <= max <= s x_i* + t``.

    In each window let ``i*`` be the entry of largest lower bound. Below, ``max >= x_i*``. Above,
    ``max <= x_i*`` when ``l_i* >= u_j`` for every other entry ``j`` of the window (the max is
    ``x_i*``: ``s = 1, t = 0``), else ``max <= max_j u_j`` (``s = 0``, ``t`` that constant).
    Bounds ``[N, B, C, H, W]``; returns, per window ``[N, B, C, H', W']``: the flat input position
    ``row * W + col`` of ``i*`` (int64), ``s`` and ``t`` (``t`` carries the gradient of ``max_j u_j``).
    """
    n, b, c, h, w = lower.shape
    oh, ow = out_hw
    kk = kernel[0] * kernel[1]
    pad = (padding[1], padding[1], padding[0], padding[0])

    def windows(t: torch.Tensor) -> torch.Tensor:  # [N * B, C, kk, P]
        t = F.pad(t.flatten(0, 1), pad, value=-torch.inf) if any(pad) else t.flatten(0, 1)
        return F.unfold(t, kernel, dilation=dilation, stride=stride).view(n * b, c, kk, oh * ow)

    uw = windows(upper)
    with torch.no_grad():
        # i* and l_i*: ATen's max pooling of the lower bounds reports the flat input position of each
        # window's max (the first in the window's row-major order at ties, as argmax over the taps)
        l_star, index = F.max_pool2d(lower.flatten(0, 1), kernel, stride, padding, dilation, return_indices=True)
        index = index.view(n * b, c, oh * ow)
        where = _window_geometry(kernel, stride, padding, dilation, (h, w), (oh, ow), lower.device)  # [kk, P]
        # max u_j over j != i*: mask i*'s tap (a padding tap clamped onto the same entry holds -inf anyway)
        others = uw.masked_fill(where == index.unsqueeze(2), -torch.inf).amax(2)
        stable = l_star.view(n * b, c, oh * ow) >= others                # [NB, C, P]
    top = uw.amax(2)                                                      # max_j u_j, with gradient
    up_slope = stable.to(lower.dtype)
    up_bias = torch.where(stable, torch.zeros_like(top), top)
    shape = (n, b, c, oh, ow)
    return index.view(shape), up_slope.view(shape), up_bias.view(shape)


def max_pool2d_relax(lam: torch.Tensor, index: torch.Tensor, up_slope: torch.Tensor, up_bias: torch.Tensor,
                     in_hw) -> tuple[torch.Tensor, torch.Tensor]:
    """Back-substitute ``lam . maxpool(x)`` through the lines of ``max_pool2d_relaxation``.

    Positive entries of Lambda take the lower line ``x_i*``, negative ones the upper line ``s x_i* +
    t``: the coefficient ``lam^+ + lam^- s`` lands on input position ``index`` of its channel, and
    the bias is ``sum(lam^- t)``. Overlapping windows (stride < kernel) may pick the same entry: the
    coefficients are summed there (a scatter-add). ``lam``: ``[M, B, K, C, H', W']``; the lines
    ``[N, B, C, H', W']``; returns ``[N, B, K, C, H, W]`` (``in_hw = (H, W)``) and the bias ``[N, B, K]``.
    """
    n, b, c = up_slope.shape[:3]
    h, w = in_hw
    lam_flat = lam.flatten(-2)                                            # [M, B, K, C, P]
    lam_pos, lam_neg = torch.relu(lam_flat), -torch.relu(-lam_flat)
    slope, bias_t = (t.flatten(-2).unsqueeze(2) for t in (up_slope, up_bias))  # [N, B, 1, C, P]
    coef = lam_pos + lam_neg * slope                                      # [N, B, K, C, P]
    bias = (lam_neg * bias_t).flatten(3).sum(-1)
    idx = index.flatten(-2).unsqueeze(2).expand(coef.shape)
    lam_in = coef.new_zeros(coef.shape[:4] + (h * w,)).scatter_add(-1, idx, coef)
    return lam_in.view(coef.shape[:4] + (h, w)), bias


def max_pool2d_backward(lam: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, kernel, stride, padding,
                        dilation) -> tuple[torch.Tensor, torch.Tensor]:
    """Back-substitute ``lam . maxpool(x)`` with auto_LiRPA's (non-optimised) relaxation of each window's max.

    ``max_pool2d_relaxation`` (bounds-sized: which entry, which line) then ``max_pool2d_relax``
    (Lambda-sized, the compiled kernels' twin). ``lam``: ``[M, B, K, C, H', W']``, bounds ``[N, B,
    C, H, W]``; returns ``[N, B, K, C, H, W]`` and the bias ``[N, B, K]``.
    """
    lines = max_pool2d_relaxation(lower, upper, kernel, stride, padding, dilation, lam.shape[-2:])
    return max_pool2d_relax(lam, *lines, lower.shape[-2:])


def product_backward(lam: torch.Tensor, a_bounds: tuple[torch.Tensor, torch.Tensor],
                     b_bounds: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Back-substitute ``lam . (a * b)`` with McCormick's planes (the ones auto_LiRPA uses).

    ``(a - l_a)(b - l_b) >= 0`` gives ``a b >= l_b a + l_a b - l_a l_b`` (below) and
    ``(a - l_a)(u_b - b) >= 0`` gives ``a b <= u_b a + l_a b - l_a u_b`` (above).
    Returns Lambda on ``a``, on ``b`` and the bias ``[N, B, K]``.
    """
    (la, ua), (lb, ub) = ((t.unsqueeze(2) for t in pair) for pair in (a_bounds, b_bounds))
    lam_pos, lam_neg = torch.relu(lam), -torch.relu(-lam)
    lam_a = lam_pos * lb + lam_neg * ub
    lam_b = lam * la
    bias = -(lam_pos * (la * lb) + lam_neg * (la * ub)).flatten(3).sum(-1)
    return lam_a, lam_b, bias


def interval_product(a_bounds: tuple[torch.Tensor, torch.Tensor],
                     b_bounds: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """IBP of ``a * b``: the extreme products of the endpoints (a bilinear map's range on a box)."""
    (la, ua), (lb, ub) = a_bounds, b_bounds
    p = torch.stack([la * lb, la * ub, ua * lb, ua * ub])
    return p.amin(0), p.amax(0)

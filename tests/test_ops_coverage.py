"""Issue 23: tanh, sigmoid, GELU, LeakyReLU, hardtanh / clamp, abs, neg, exp, cat, slicing, mean / sum,
max pooling (overlapping too), in-place forms and products of two bounded tensors.

For every op (one tiny float64 model each, ``ops_nets.OPS_NETS``) and every method:

* soundness: every output of > 10^5 points over the suite (box corners, uniform points, and PGD
  toward each output's lower and upper bound) lies within the bounds, at every radius of a
  multi-radius call (float64 rounding only);
* radius 0 gives the clean output; the N-radius call equals N one-radius calls;
* the compiled backend (new ops on the reference ops between compiled steps) equals the reference;
* float64 gradcheck of the bounds w.r.t. the input and the parameters;
* each model trains with ``gm_loss`` for a few steps, and its bounds stay sound;
* auto_LiRPA's bounds on the same model (skipped when auto_LiRPA is not importable);
* relaxations in isolation: every line lies on the right side of the function over ``[l, u]``.
"""
from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gmbound
from gmbound.ops import convex, nonlinear, smooth_relu
from gmbound.reference import primitives as R
from ops_nets import OPS_NETS, make_ops_case
from backends import needs_extension

METHODS = ["ibp", "crown-ibp", "crown"]
RADII = [0.0, 0.03, 0.1, 0.3]
TOL = 1e-9
HAS_LIRPA = importlib.util.find_spec("auto_LiRPA") is not None


def box_points(x: torch.Tensor, radius: float, n: int, seed: int) -> torch.Tensor:
    """``n`` points per sample of the clipped box: the two extreme corners, corners, uniform points. ``[n, B, *S]``."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = (x - radius).clamp(min=0), (x + radius).clamp(max=1)
    u = torch.rand((n,) + x.shape, generator=g, dtype=x.dtype)
    u[: n // 2] = (u[: n // 2] > 0.5).to(x.dtype)
    u[0], u[1] = 0, 1
    return lo + u * (hi - lo)


def pgd_points(net: nn.Module, x: torch.Tensor, radius: float, n_out: int, steps: int = 30,
               seed: int = 0) -> torch.Tensor:
    """Signed-gradient ascent toward each output's minimum and maximum over the box: ``[2 n_out, B, *S]``."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = (x - radius).clamp(min=0), (x + radius).clamp(max=1)
    pts = (lo + torch.rand((2 * n_out,) + x.shape, generator=g, dtype=x.dtype) * (hi - lo)).requires_grad_(True)
    sign = torch.cat([-torch.ones(n_out), torch.ones(n_out)]).to(x.dtype)   # minimise, then maximise
    pick = torch.cat([torch.arange(n_out), torch.arange(n_out)])
    step = (hi - lo) / 8
    for _ in range(steps):
        out = net(pts.flatten(0, 1)).view(2 * n_out, x.shape[0], -1)
        obj = (out[torch.arange(2 * n_out), :, pick] * sign[:, None]).sum()
        grad, = torch.autograd.grad(obj, pts)
        with torch.no_grad():
            pts += step * grad.sign()
            pts.copy_(torch.maximum(torch.minimum(pts, hi), lo))
        step = step * 0.85
    return pts.detach()


def check_sound(net: nn.Module, x: torch.Tensor, bounds, radii, n_points: int, seed: int) -> int:
    """Assert every sampled and attacked output lies within the bounds; returns the number of points checked."""
    checked = 0
    with torch.no_grad():
        n_out = net(x).shape[1]
    for i, r in enumerate(radii):
        pts = box_points(x, r, n_points, seed + i)
        if r > 0:
            pts = torch.cat([pts, pgd_points(net, x, r, n_out, seed=seed + i)])
        with torch.no_grad():
            out = net(pts.flatten(0, 1)).view(pts.shape[0], x.shape[0], -1)
        lo, up = bounds.lower[i], bounds.upper[i]
        below, above = (lo - out).max().item(), (out - up).max().item()
        assert below <= TOL and above <= TOL, f"radius {r}: escapes by {max(below, above):.3e}"
        checked += pts.shape[0] * x.shape[0]
    return checked


# ----------------------------------------------------------------------------- soundness
POINTS = {"n": 0}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", sorted(OPS_NETS))
def test_sound_by_sampling_and_pgd(name, method):
    net, x, _ = make_ops_case(name, 0)
    b = gmbound.BoundedSequential(net).bounds(x, RADII, method=method, x_min=0, x_max=1, backend="reference")
    with torch.no_grad():
        f = net(x)
    torch.testing.assert_close(b.lower[0], f, rtol=0, atol=1e-12)   # radius 0: the clean output
    torch.testing.assert_close(b.upper[0], f, rtol=0, atol=1e-12)
    POINTS["n"] += check_sound(net, x, b, RADII, 600, seed=17)
    widths = b.upper - b.lower
    assert (widths[1:] >= widths[:-1] - 1e-12).all() if method == "ibp" else True  # IBP is nested in r
    assert (widths[-1] > 1e-3).any()  # real boxes


def test_the_suite_checks_over_1e5_points():
    """Runs after the soundness tests above (pytest keeps file order); counts what they checked."""
    if POINTS["n"] == 0:
        pytest.skip("run together with test_sound_by_sampling_and_pgd")
    assert POINTS["n"] >= 100_000, POINTS["n"]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(OPS_NETS))
def test_sound_by_sampling_and_pgd_many_seeds(name):
    checked = 0
    for seed in range(1, 4):
        net, x, _ = make_ops_case(name, seed, batch=4)
        radii = [0.01, 0.05, 0.15, 0.5]
        for method in METHODS:
            b = gmbound.BoundedSequential(net).bounds(x, radii, method=method, x_min=0, x_max=1,
                                                      backend="reference")
            checked += check_sound(net, x, b, radii, 2500, seed=100 * seed)
    assert checked >= 3 * 3 * 4 * 2500 * 4


@pytest.mark.parametrize("name", sorted(OPS_NETS))
def test_radii_axis_equals_separate_calls(name):
    net, x, y = make_ops_case(name, 1)
    bnet = gmbound.BoundedSequential(net)
    for method in METHODS:
        together = bnet.margin_bounds(x, y, RADII, method=method, x_min=0, x_max=1, backend="reference")
        apart = torch.cat([bnet.margin_bounds(x, y, [r], method=method, x_min=0, x_max=1, backend="reference")
                           for r in RADII])
        torch.testing.assert_close(together, apart, rtol=1e-12, atol=1e-12)
    # per-sample radii [N, B]
    radii = torch.tensor([[0.02, 0.1, 0.05], [0.3, 0.0, 0.1]], dtype=torch.float64)
    per = bnet.margin_bounds(x, y, radii, x_min=0, x_max=1, backend="reference")
    for s in range(3):
        one = bnet.margin_bounds(x[s:s + 1], y[s:s + 1], radii[:, s], x_min=0, x_max=1, backend="reference")
        torch.testing.assert_close(per[:, s:s + 1], one, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(OPS_NETS))
def test_full_crown_at_least_as_tight_as_crown_ibp(name):
    net, x, y = make_ops_case(name, 2)
    bnet = gmbound.BoundedSequential(net)
    m = {meth: bnet.margin_bounds(x, y, RADII, method=meth, x_min=0, x_max=1, backend="reference")
         for meth in ("crown-ibp", "crown")}
    assert (m["crown"] >= m["crown-ibp"] - 1e-12).all()


@needs_extension
@pytest.mark.parametrize("name", sorted(OPS_NETS))
def test_compiled_backend_runs_new_ops_on_the_reference_ops(name):
    """backend='cpu' / 'auto': compiled Linear / Conv / (leaky) ReLU / max-pool steps, the other new ops on the reference ops."""
    net, x, y = make_ops_case(name, 3)
    bnet = gmbound.BoundedSequential(net)
    for method in METHODS:
        want = bnet.bounds(x, RADII, method=method, x_min=0, x_max=1, backend="reference")
        for backend in ("cpu", "auto"):
            got = bnet.bounds(x, RADII, method=method, x_min=0, x_max=1, backend=backend)
            torch.testing.assert_close(got.lower, want.lower, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(got.upper, want.upper, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- gradients
SLOW_GRAD = {"leaky_maxpool_cnn", "maxpool_overlapping", "slice", "maxpool_dilated", "maxpool", "inplace"}


@pytest.mark.parametrize("name", sorted(OPS_NETS))
def test_gradcheck_bounds_wrt_input_and_parameters(name):
    net, x, y = make_ops_case(name, 4, batch=1)
    bnet = gmbound.BoundedSequential(net)
    param = next(p for p in net.parameters() if p.dim() >= 2)
    for method in ("crown-ibp",):  # IBP's steps are among CROWN-IBP's (the interval pass)
        def g(x_, w_):  # the parameter as an input of the function: swap it in
            name_ = next(n for n, p in net.named_parameters() if p is param)
            mod_name, _, attr = name_.rpartition(".")
            mod = net.get_submodule(mod_name)
            old = mod._parameters[attr]
            mod._parameters[attr] = w_
            try:
                return bnet.bounds(x_, [0.02, 0.07], method=method, backend="reference").lower
            finally:
                mod._parameters[attr] = old
        xx = x.clone().requires_grad_(True)
        ww = param.detach().clone().requires_grad_(True)
        assert torch.autograd.gradcheck(g, (xx, ww), eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=name in SLOW_GRAD)


# ----------------------------------------------------------------------------- training
@pytest.mark.parametrize("name", sorted(OPS_NETS))
def test_trains_with_gm_loss_and_stays_sound(name):
    net, x, y = make_ops_case(name, 5, batch=6)
    net.train()
    bnet = gmbound.BoundedSequential(net)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in net.parameters()]
    losses = []
    for _ in range(3):
        out = gmbound.gm_loss(bnet, x, y, eps=0.1, n_radii=4, kappa=0.5, beta=0.5, x_min=0, x_max=1,
                              backend="reference")
        opt.zero_grad()
        out.loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
        opt.step()
        losses.append(out.loss.item())
    assert all(map(lambda v: v == v and abs(v) < 1e6, losses))
    assert any(not torch.equal(a, p) for a, p in zip(before, net.parameters()))
    net.eval()
    radii = [0.025, 0.1]
    b = bnet.bounds(x, radii, method="crown-ibp", x_min=0, x_max=1)
    check_sound(net, x, b, radii, 200, seed=5)


# ----------------------------------------------------------------------------- relaxations in isolation
def _grid_check(op, l, u, n=257):
    """Every line of ``op.lines(l, u)`` on the right side of ``f`` on a grid of ``[l, u]``; range contains ``f``."""
    a_l, b_l, a_u, b_u = op.lines(l, u)
    lo, hi = op.range(l, u)
    t = torch.linspace(0, 1, n, dtype=l.dtype).view(-1, *([1] * l.dim()))
    z = l + t * (u - l)
    fz = op.fn(z)
    tol = 1e-12 * (1 + fz.abs() + z.abs() * fz.abs())  # float64 rounding of the lines' values (exp: ~1e4 * z)
    assert (fz >= a_l * z + b_l - tol).all(), "lower line above f"
    assert (fz <= a_u * z + b_u + tol).all(), "upper line below f"
    assert (fz >= lo - tol).all() and (fz <= hi + tol).all(), "interval misses f"
    return a_l, b_l, a_u, b_u


ELEMENTWISE = {
    "tanh": nonlinear.TanhOp(None, "t"), "sigmoid": nonlinear.SigmoidOp(None, "s"), "gelu": smooth_relu.GELUOp(None, "g"),
    "leaky": nonlinear.LeakyReLUOp(None, "l", 0.1), "leaky_concave": nonlinear.LeakyReLUOp(None, "l", 2.5),
    "leaky_negative": nonlinear.LeakyReLUOp(None, "l", -0.3), "abs": nonlinear.AbsOp(None, "a"),
    "hardtanh": nonlinear.ClampOp(None, "h", -1.0, 1.0), "clamp_min": nonlinear.ClampOp(None, "c", 0.2, None),
    "clamp_max": nonlinear.ClampOp(None, "c", None, -0.1), "exp": convex.ExpOp(None, "e"),
    "softplus": convex.SoftplusOp(None, "sp"), "softplus_switch": convex.SoftplusOp(None, "sp", 2.0, 1.0),
    "softplus_steep": convex.SoftplusOp(None, "sp", 50.0, 20.0), "elu": convex.ELUOp(None, "e"),
    "elu_small_alpha": convex.ELUOp(None, "e", 0.3), "relu_as_elu": convex.ELUOp(None, "e", 0.0),
    "celu": convex.ELUOp(None, "c", 2.0, continuous=True), "celu_small": convex.ELUOp(None, "c", 0.2, continuous=True),
    "silu": smooth_relu.SiLUOp(None, "s"), "mish": smooth_relu.MishOp(None, "m"),
    "gelu_tanh": smooth_relu.GELUTanhOp(None, "g"),
}


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_relaxation_lines_bound_the_function(name):
    """Random intervals of every kind (one-sided, across the kinks / inflections, tiny, huge, points)."""
    op = ELEMENTWISE[name]
    g = torch.Generator().manual_seed(0)
    centre = torch.randn(4000, generator=g, dtype=torch.float64) * 3
    width = torch.rand(4000, generator=g, dtype=torch.float64) ** 3 * 8
    width[:200] = 0
    width[200:400] = 1e-9
    l, u = centre - width / 2, centre + width / 2
    if name == "exp":
        l, u = l.clamp(max=20), u.clamp(max=20)
    _grid_check(op, l, u)


def test_s_shaped_lines_touch_the_function():
    """Across 0 both lines are tangents or chords: each touches f in [l, u] (no slack), none is a loose stand-in."""
    for op in (nonlinear.TanhOp(None, "t"), nonlinear.SigmoidOp(None, "s")):
        l = torch.tensor([-3.0, -0.5, -2.0, -0.1, -6.0], dtype=torch.float64)
        u = torch.tensor([0.5, 3.0, 2.0, 0.2, 1.0], dtype=torch.float64)
        a_l, b_l, a_u, b_u = _grid_check(op, l, u)
        z = l + torch.linspace(0, 1, 200001, dtype=l.dtype).view(-1, 1) * (u - l)
        fz = op.fn(z)
        assert ((fz - (a_l * z + b_l)).min(0).values < 1e-9).all()
        assert (((a_u * z + b_u) - fz).min(0).values < 1e-9).all()


def test_convex_lines_touch_the_function():
    """Convex ops: the upper chord passes through both endpoints, the lower tangent through the midpoint."""
    l = torch.tensor([-3.0, -0.5, -2.0, 0.1, -6.0, 1.5], dtype=torch.float64)
    u = torch.tensor([-1.0, 3.0, 2.0, 0.2, 1.0, 4.0], dtype=torch.float64)
    for op in (convex.ExpOp(None, "e"), convex.SoftplusOp(None, "sp", 1.5), convex.ELUOp(None, "e", 0.7),
               convex.ELUOp(None, "c", 0.5, continuous=True)):
        a_l, b_l, a_u, b_u = _grid_check(op, l, u)
        m = (l + u) / 2
        for z, a, b in ((m, a_l, b_l), (l, a_u, b_u), (u, a_u, b_u)):
            torch.testing.assert_close(a * z + b, op.fn(z), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("op", [smooth_relu.GELUOp(None, "g"), smooth_relu.GELUTanhOp(None, "g"),
                                smooth_relu.SiLUOp(None, "s"), smooth_relu.MishOp(None, "m")],
                         ids=["gelu", "gelu_tanh", "silu", "mish"])
def test_smooth_relu_shape_constants(op):
    """z* is the minimum of f on a fine grid; f'' changes sign at c_lo and c_hi and nowhere else in [-8, 8]."""
    argmin, c_lo, c_hi = op.shape()
    z = torch.linspace(-8, 8, 160001, dtype=torch.float64, requires_grad=True)
    fz = op.fn(z)
    assert abs(z[fz.argmin()].item() - argmin) < 2e-4
    (d1,) = torch.autograd.grad(fz.sum(), z, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), z)
    torch.testing.assert_close(d1.detach(), op.d1(z.detach()), rtol=1e-12, atol=1e-12)  # d1 is f'
    flips = z[1:][(d2[1:] > 0) != (d2[:-1] > 0)].detach()
    assert flips.numel() == 2 and abs(flips[0] - c_lo) < 2e-4 and abs(flips[1] - c_hi) < 2e-4
    assert (d2[(z > c_lo + 1e-3) & (z < c_hi - 1e-3)] > 0).all()
    assert (fz <= torch.relu(z) + 1e-15).all()  # the upper line across 0 relies on f <= relu


@pytest.mark.parametrize("c_in, c_out, groups", [(2, 4, 2), (6, 6, 6), (6, 9, 3), (4, 8, 1)])
def test_dense_group_weight_is_the_same_convolution(c_in, c_out, groups):
    """The block-diagonal dense weight convolves like the grouped one, and its gradient is the grouped one's."""
    from gmbound.ops.affine import dense_group_weight
    g = torch.Generator().manual_seed(c_in * c_out + groups)
    w = torch.randn(c_out, c_in // groups, 3, 2, dtype=torch.float64, generator=g, requires_grad=True)
    x = torch.randn(2, c_in, 7, 6, dtype=torch.float64, generator=g)
    grouped = F.conv2d(x, w, stride=(2, 1), padding=1, groups=groups)
    dense = F.conv2d(x, dense_group_weight(w, groups), stride=(2, 1), padding=1)
    torch.testing.assert_close(dense, grouped, rtol=1e-12, atol=1e-12)
    probe = torch.randn(grouped.shape, dtype=torch.float64, generator=g)
    (g_grouped,) = torch.autograd.grad((grouped * probe).sum(), w)
    (g_dense,) = torch.autograd.grad((dense * probe).sum(), w)
    torch.testing.assert_close(g_dense, g_grouped, rtol=1e-12, atol=1e-12)


def test_max_pool_relaxation_by_brute_force():
    """Overlapping, padded, dilated windows: lam . maxpool(x) >= the back-substituted bound at random x in the box."""
    g = torch.Generator().manual_seed(1)
    for kernel, stride, padding, dilation in [((2, 2), (2, 2), (0, 0), (1, 1)), ((3, 3), (1, 1), (1, 1), (1, 1)),
                                              ((2, 3), (1, 2), (1, 1), (2, 1))]:
        lower = torch.randn(2, 3, 2, 6, 7, generator=g, dtype=torch.float64)
        upper = lower + torch.rand(2, 3, 2, 6, 7, generator=g, dtype=torch.float64) * 2
        upper[0, 0] = lower[0, 0]  # points: stable windows everywhere
        out = F.max_pool2d(lower[0], kernel, stride, padding, dilation)
        lam = torch.randn((1, 3, 5) + out.shape[1:], generator=g, dtype=torch.float64)
        lam_in, bias = R.max_pool2d_backward(lam, lower, upper, kernel, stride, padding, dilation)
        z = lower + torch.rand((500,) + lower.shape, generator=g, dtype=torch.float64) * (upper - lower)
        pooled = F.max_pool2d(z.flatten(0, 2), kernel, stride, padding, dilation).view(z.shape[:3] + out.shape[1:])
        exact = (lam.unsqueeze(0) * pooled.unsqueeze(3)).flatten(4).sum(-1)        # [500, N, B, K]
        linear = (lam_in.unsqueeze(0) * z.unsqueeze(3)).flatten(4).sum(-1) + bias
        assert (exact >= linear - 1e-12).all()
        torch.testing.assert_close(exact[:, 0, 0], linear[:, 0, 0])  # a point: exact


def test_mccormick_by_brute_force():
    g = torch.Generator().manual_seed(2)
    la, lb = torch.randn(2, 3, 7, generator=g, dtype=torch.float64), torch.randn(2, 3, 7, generator=g,
                                                                                  dtype=torch.float64)
    ua, ub = la + torch.rand(2, 3, 7, generator=g, dtype=torch.float64), lb + torch.rand(2, 3, 7, generator=g,
                                                                                         dtype=torch.float64)
    lam = torch.randn(1, 3, 4, 7, generator=g, dtype=torch.float64)
    lam_a, lam_b, bias = R.product_backward(lam, (la, ua), (lb, ub))
    lo, hi = R.interval_product((la, ua), (lb, ub))
    ta, tb = torch.rand((2000, 2, 3, 7), generator=g, dtype=torch.float64), torch.rand((2000, 2, 3, 7), generator=g,
                                                                                       dtype=torch.float64)
    ta[:500], tb[:500] = ta[:500].round(), tb[:500].round()
    a, b = la + ta * (ua - la), lb + tb * (ub - lb)
    exact = (lam * (a * b).unsqueeze(3)).sum(-1)
    linear = (lam_a * a.unsqueeze(3) + lam_b * b.unsqueeze(3)).sum(-1) + bias
    assert (exact >= linear - 1e-12).all()
    assert ((a * b >= lo - 1e-12) & (a * b <= hi + 1e-12)).all()


# ----------------------------------------------------------------------------- refusals
class _TwoReaders(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 3)

    def forward(self, x):
        h = self.a(x)
        h.relu_()
        return h + self.a(x)


class _Softmax(nn.Module):
    def forward(self, x):
        return torch.softmax(x, 1)


@pytest.mark.parametrize("model, pattern", [
    (_TwoReaders(), r"node 'relu_' \(call_method Tensor.relu_\) at test_ops_coverage.py:\d+: h.relu_\(\).*in-place"),
    (_Softmax(), r"node 'softmax' \(call_function torch.softmax\) at test_ops_coverage.py:\d+: "
                 r"return torch.softmax\(x, 1\)"),
    (nn.Sequential(nn.Conv2d(1, 1, 3), nn.MaxPool2d(2, ceil_mode=True)), r"MaxPool2d at index 1.*ceil_mode"),
    (nn.Sequential(nn.Linear(3, 3), nn.ELU(1.5)), r"ELU at index 1: ELU with alpha=1.5 is not convex"),
    (nn.Sequential(nn.Linear(3, 3), nn.ELU(-0.5)), r"ELU at index 1: ELU with alpha=-0.5 is not convex"),
    (nn.Sequential(nn.Linear(3, 3), nn.Softplus(beta=-1.0)), r"Softplus at index 1: Softplus with beta=-1.0"),
    (nn.Sequential(nn.Linear(3, 3), nn.SELU()), r"SELU at index 1 is not supported"),
])
def test_refusals_name_the_node_and_line(model, pattern):
    with pytest.raises(gmbound.UnsupportedLayerError, match=pattern):
        gmbound.BoundedSequential(model)


@pytest.mark.parametrize("body, pattern", [
    ("x.sum()", r"reduces the batch axis"),
    ("x.mean(0)", r"batch axis"),
    ("x[0]", r"indexes the batch axis"),
    ("x[..., 1]", r"Ellipsis"),
    ("x[:, None]", r"not a slice or an integer"),
    ("torch.cat([x, x], 0)", r"not the batch axis"),
    ("x.clamp(min=x)", r"by numbers"),
    ("x / (x + 1)", r"division of two tensors"),
    ("torch.nn.functional.elu(x, 2.0)", r"node 'elu'.*ELU with alpha=2.0 is not convex"),
    ("torch.nn.functional.softplus(x, x)", r"softplus with beta=.*give a number"),
])
def test_functional_refusals(body, pattern):
    src = f"def forward(self, x):\n    return {body}\n"
    ns: dict = {"torch": torch}
    exec(compile(src, "user_model.py", "exec"), ns)
    model = type("M", (nn.Module,), {"forward": ns["forward"]})()
    with pytest.raises(gmbound.UnsupportedLayerError, match=pattern):
        gmbound.BoundedSequential(model)


def test_shapes_that_do_not_fit_name_the_op():
    class Cat(nn.Module):
        def forward(self, x):
            return torch.cat([x, x[:, :2]], 2)
    with pytest.raises(ValueError, match=r"node 'cat'.*must agree"):
        gmbound.BoundedSequential(Cat()).bounds(torch.zeros(1, 3, 4), 0.1)
    class Prod(nn.Module):
        def forward(self, x):
            return x * x[:, :2]
    with pytest.raises(ValueError, match=r"different per-sample shapes"):
        gmbound.BoundedSequential(Prod()).bounds(torch.zeros(1, 3), 0.1)


# ----------------------------------------------------------------------------- auto_LiRPA parity
def _lirpa_bounds(net, x, eps, method):
    from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm

    # auto_LiRPA's default hardtanh relaxation is "same-slope"; gmbound uses its "adaptive" one
    model = BoundedModule(net, torch.zeros_like(x), device="cpu", bound_opts={"hardtanh": "adaptive"})
    bx = BoundedTensor(x, PerturbationLpNorm(eps=eps, x_L=(x - eps).clamp(min=0), x_U=(x + eps).clamp(max=1)))
    return model.compute_bounds(x=(bx,), method=method)


PARITY = sorted(n for n, (_, _, parity) in OPS_NETS.items() if parity)


@pytest.mark.skipif(not HAS_LIRPA, reason="auto_LiRPA is not importable (CI has none): parity not checked")
@pytest.mark.parametrize("name", PARITY)
def test_parity_with_auto_lirpa(name):
    """Same bounds as auto_LiRPA (float32: its S-shaped tables are float32) for IBP, CROWN-IBP and CROWN."""
    net, x, _ = make_ops_case(name, 6)
    net, x = net.float(), x.float()
    for method, ours in (("IBP", "ibp"), ("CROWN-IBP", "crown-ibp"), ("CROWN", "crown")):
        lb, ub = _lirpa_bounds(net, x, 0.05, method)
        b = gmbound.BoundedSequential(net).bounds(x, 0.05, method=ours, x_min=0, x_max=1, backend="reference")
        torch.testing.assert_close(b.lower[0], lb.detach(), rtol=1e-4, atol=2e-5, msg=f"{name} {method} lower")
        torch.testing.assert_close(b.upper[0], ub.detach(), rtol=1e-4, atol=2e-5, msg=f"{name} {method} upper")


@pytest.mark.skipif(not HAS_LIRPA, reason="auto_LiRPA is not importable (CI has none): parity not checked")
def test_grouped_conv_parity_with_auto_lirpa():
    """Grouped / depthwise convolutions: auto_LiRPA's IBP and CROWN-IBP bounds on the grouped net, and its CROWN
    bounds on the dense twin (groups = 1, block-diagonal weight; the same function). auto_LiRPA 0.7.1's full CROWN
    on the grouped layers themselves is a little looser than on the twin, so the twin is the reference there."""
    from gmbound.ops.affine import dense_group_weight
    net, x, _ = make_ops_case("depthwise_conv", 6)
    net, x = net.float(), x.float()
    twin = nn.Sequential(*[layer if not isinstance(layer, nn.Conv2d) else
                           nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                                     layer.padding) for layer in net])
    with torch.no_grad():
        for layer, twin_layer in zip(net, twin):
            if isinstance(layer, nn.Conv2d):
                twin_layer.weight.copy_(dense_group_weight(layer.weight, layer.groups))
                twin_layer.bias.copy_(layer.bias)
    for method, ours, reference in (("IBP", "ibp", net), ("CROWN-IBP", "crown-ibp", net), ("CROWN", "crown", twin)):
        lb, ub = _lirpa_bounds(reference, x, 0.05, method)
        b = gmbound.BoundedSequential(net).bounds(x, 0.05, method=ours, x_min=0, x_max=1, backend="reference")
        torch.testing.assert_close(b.lower[0], lb.detach(), rtol=1e-4, atol=2e-5, msg=f"{method} lower")
        torch.testing.assert_close(b.upper[0], ub.detach(), rtol=1e-4, atol=2e-5, msg=f"{method} upper")


@pytest.mark.parametrize("name", ["product", "maxpool_overlapping", "tanh", "cat"])
def test_tiled_calls_equal_whole_calls(name):
    """Tiles of (radius, sample) rows share one interval pass: the bounds kept for products (pairs of pairs) too."""
    from gmbound import engine

    net, x, y = make_ops_case(name, 7, batch=5)
    bnet = gmbound.BoundedSequential(net)
    whole = {m: bnet.margin_bounds(x, y, RADII, method=m, x_min=0, x_max=1, backend="reference")
             for m in ("ibp", "crown-ibp")}
    engine.set_tile_budget(1)  # one row per tile
    try:
        for m in ("ibp", "crown-ibp"):
            tiled = bnet.margin_bounds(x, y, RADII, method=m, x_min=0, x_max=1, backend="reference")
            torch.testing.assert_close(tiled, whole[m], rtol=1e-12, atol=1e-12)
    finally:
        engine.set_tile_budget(None)


@pytest.mark.parametrize("name", ["product", "leaky_maxpool_cnn", "sigmoid"])
def test_loss_fusion_with_new_ops(name):
    """gm_loss(loss_fusion=True) back-substitutes through the new ops too; its robust CE bounds the clean CE."""
    net, x, y = make_ops_case(name, 8, batch=4)
    bnet = gmbound.BoundedSequential(net)
    plain = gmbound.gm_loss(bnet, x, y, eps=0.05, n_radii=3, x_min=0, x_max=1, backend="reference")
    fused = gmbound.gm_loss(bnet, x, y, eps=0.05, n_radii=3, x_min=0, x_max=1, backend="reference",
                            loss_fusion=True)
    assert torch.isfinite(fused.loss)
    fused.loss.backward()
    assert all(p.grad is not None for p in net.parameters())
    assert torch.isfinite(plain.loss)
    for out in (plain, fused):  # an upper bound of the worst CE over each box is at least the CE at x
        assert out.robust_loss.item() >= out.natural_loss.item() - 1e-9


def test_a_sequential_listing_one_module_twice_is_bounded_as_it_runs():
    """nn.Sequential(fc1, act, fc2, act, ...) runs act twice; the flattened chain used to drop the repeat."""
    torch.manual_seed(0)
    act, pool = nn.LeakyReLU(0.1), nn.MaxPool2d(2)
    for model, shape in ((nn.Sequential(nn.Linear(3, 4), act, nn.Linear(4, 4), act, nn.Linear(4, 2)), (3,)),
                         (nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), pool, nn.Conv2d(2, 2, 3, padding=1), pool,
                                        nn.Flatten(), nn.Linear(2 * 2 * 2, 2)), (1, 8, 8))):
        model = model.double()
        x = torch.rand((4,) + shape, dtype=torch.float64)
        bnet = gmbound.BoundedSequential(model)
        torch.testing.assert_close(bnet(x), model(x), rtol=0, atol=0)
        b = bnet.bounds(x, [0.0, 0.1], method="crown-ibp", x_min=0, x_max=1)
        torch.testing.assert_close(b.lower[0], model(x), rtol=0, atol=1e-12)
        check_sound(model, x, b, [0.0, 0.1], 300, seed=3)

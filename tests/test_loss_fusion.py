"""Loss fusion in the native GM loss (issue 22, part 1): ``gm_loss(..., loss_fusion=True)``.

The fused robust term at radius r is an upper bound of ``max CE(f(x'), y)`` over the box, from the IBP
intervals of ``z_j = f_j - f_y`` and one CROWN-IBP row (the chord of exp). Checked here: soundness at
sampled and CE-ascent points of each box (float64, plain / convolutional / BatchNorm / residual nets),
equality with gmbound.compat's loss fusion, the IBP case equal to the margin loss, gradients (gradcheck),
the compiled path equal to the reference, and finite values at very large margins.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import gmbound
from gmbound.compat import BoundDataParallel, BoundedModule, BoundedTensor, CrossEntropyWrapper, PerturbationLpNorm
from gmbound.compat.bound_ops import BoundExp
from gmbound.attacks import pgd_attack
from gmbound.losses import gm_loss
from gmbound.specification import exp_chord_slope, fused_cross_entropy_bound
from graph_nets import make_graph_case
from backends import BACKENDS, needs_extension
from nets import make_case, sample_box

CASES = [("mlp", make_case), ("cnn", make_case), ("cnn_bn", make_case), ("resnet", make_graph_case),
         ("dense", make_graph_case)]


def fused(net, x, y, eps, method="crown-ibp", beta=1.0, backend="reference"):
    return gmbound.BoundedSequential(net).fused_cross_entropy(x, y, eps, method=method, beta=beta, x_min=0.0,
                                                              x_max=1.0, backend=backend)


def ce_of_points(net, pts, y):
    """``CE(f(x'), y)`` of points ``[P, B, *S]``: ``[P, B]``."""
    with torch.no_grad():
        logits = net(pts.flatten(0, 1)).view(pts.shape[0], pts.shape[1], -1)
    return F.cross_entropy(logits.flatten(0, 1), y.repeat(pts.shape[0]), reduction="none").view(pts.shape[:2])


def ce_ascent(net, x, y, radius, steps=30, seed=0):
    """Points of the clipped box that (locally) maximise the cross-entropy: sign-gradient ascent from random starts."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = (x - radius).clamp(min=0.0), (x + radius).clamp(max=1.0)
    cur = lo + torch.rand(x.shape, generator=g, dtype=x.dtype) * (hi - lo)
    for _ in range(steps):
        cur.requires_grad_(True)
        loss = F.cross_entropy(net(cur), y, reduction="sum")
        grad, = torch.autograd.grad(loss, cur)
        cur = torch.max(torch.min(cur.detach() + 0.25 * radius * grad.sign(), hi), lo)
    return cur.detach()


# ----------------------------------------------------------------------------- soundness
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("beta", [1.0, 0.4, 0.0])
@pytest.mark.parametrize("name,make", CASES)
def test_fused_bound_is_above_the_cross_entropy_of_every_point_of_each_box(name, make, beta, backend):
    net, x, y = make(name, seed=51, batch=4)
    radii = torch.tensor([0.02, 0.1, 0.3], dtype=x.dtype)
    out = fused(net, x, y, radii, beta=beta, backend=backend)
    assert out.bound.shape == (3, 4) and out.ibp_max_z.shape == (3, 4)
    for i, r in enumerate(radii.tolist()):
        worst = ce_of_points(net, sample_box(x, r, 64, 0.0, 1.0, seed=i), y).max(0)[0]
        worst = torch.maximum(worst, ce_of_points(net, ce_ascent(net, x, y, r, seed=i)[None], y)[0])
        assert bool((worst <= out.bound[i] + 1e-9).all()), (i, worst, out.bound[i])
    # the IBP worst margin: no point of the box has a larger f_j - f_y
    pts = sample_box(x, 0.3, 64, 0.0, 1.0, seed=9)
    with torch.no_grad():
        lg = net(pts.flatten(0, 1)).view(64, 4, -1)
    z = (lg - lg.gather(2, y[None, :, None].expand(64, 4, 1))).max(2)[0].max(0)[0]
    assert bool((z <= out.ibp_max_z[2] + 1e-9).all())


def test_fused_bound_with_per_sample_radii_is_that_of_each_radius():
    """Stochastic GRT bounds each sample at its own radius ([1, B] radii): the same numbers as one radius at a time."""
    net, x, y = make_case("cnn_bn", seed=52, batch=4)
    radii = torch.tensor([[0.05, 0.2, 0.1, 0.3]], dtype=x.dtype)
    per_sample = fused(net, x, y, radii).bound[0]
    for b in range(4):
        one = fused(net, x, y, float(radii[0, b])).bound[0, b]
        torch.testing.assert_close(per_sample[b], one)


# ----------------------------------------------------------------------------- against compat / the margin loss
def compat_fused(net, x, y, eps, beta):
    """gmbound.compat's loss fusion as auto_LiRPA's cifar_training.py runs it: log(beta ub_C + (1 - beta) ub_I) + m."""
    model = BoundDataParallel(BoundedModule(CrossEntropyWrapper(net), (x, y), bound_opts={"loss_fusion": True}))
    bx = BoundedTensor(x, PerturbationLpNorm(norm=np.inf, eps=eps, x_L=(x - eps).clamp(min=0.0),
                                             x_U=(x + eps).clamp(max=1.0)))
    model(bx, y)
    _, iub = model(method_opt="compute_bounds", x=(bx, y), IBP=True, C=None, method=None, no_replicas=True)
    ub = iub
    if beta > 0:
        _, cub = model(method_opt="compute_bounds", IBP=False, C=None, method="backward", bound_lower=False,
                       bound_upper=True, no_replicas=True)
        ub = beta * cub + (1 - beta) * iub
    shift = model(get_property=True, node_class=BoundExp, att_name="max_input")
    return (torch.log(ub) + shift)[:, 0]


@pytest.mark.parametrize("beta", [1.0, 0.5, 0.0])
@pytest.mark.parametrize("name", ["mlp", "cnn_bn"])
def test_equal_to_compat_loss_fusion(name, beta):
    net, x, y = make_case(name, seed=53, batch=5)
    want = compat_fused(net, x, y, 0.15, beta)
    got = fused(net, x, y, 0.15, beta=beta).bound[0]
    # compat clamps chord slopes at 1e-8 (auto_LiRPA's), which moves its bound by < n * 1e-8 relative
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stochastic", [False, True])
def test_ibp_fusion_is_the_margin_loss(backend, stochastic):
    """With IBP (and with beta = 0) the fused bound log(1 + sum_j exp(u_j)) is CE(-m_IBP, y): the same loss."""
    net, x, y = make_graph_case("resnet", seed=54, batch=6)
    for method, beta in (("ibp", 1.0), ("crown-ibp", 0.0)):
        results = []
        for fusion in (False, True):
            g = torch.Generator().manual_seed(3)
            results.append(gm_loss(net, x, y, 0.2, n_radii=4, method=method, beta=beta, x_min=0.0, x_max=1.0,
                                   stochastic=stochastic, generator=g, backend=backend, loss_fusion=fusion))
        torch.testing.assert_close(results[1].loss, results[0].loss)
        torch.testing.assert_close(results[1].verified_error, results[0].verified_error, equal_nan=True)


@pytest.mark.parametrize("stochastic", [False, True])
def test_gm_loss_with_fusion_weighs_the_fused_bounds(stochastic):
    net, x, y = make_case("cnn", seed=55, batch=6)
    g = torch.Generator().manual_seed(4)
    res = gm_loss(net, x, y, 0.2, n_radii=5, kappa=0.3, beta=0.7, x_min=0.0, x_max=1.0, stochastic=stochastic,
                  generator=g, backend="reference", loss_fusion=True)
    if stochastic:
        radii = res.radii[res.drawn_index][None]
        want = fused(net, x, y, radii, beta=0.7).bound[0].mean()
    else:
        want = (res.weights * fused(net, x, y, res.radii, beta=0.7).bound.mean(1)).sum()
    torch.testing.assert_close(res.robust_loss, want)
    torch.testing.assert_close(res.loss, 0.3 * F.cross_entropy(net(x), y) + 0.7 * want)


def test_fused_verified_error_is_a_certificate():
    """Counted verified: IBP margins > 0 or the CE bound < log 2. No PGD point of a certified sample is
    misclassified."""
    net, x, y = make_case("mlp", seed=56, batch=64)
    with torch.no_grad():  # confident (CE bounds below log 2 occur) and right: labels = its own predictions
        net[-1].weight.mul_(20)
        y = net(x).argmax(1)
    radii = torch.tensor([0.1, 0.2, 0.3], dtype=x.dtype)
    res = gm_loss(net, x, y, 0.3, n_radii=3, x_min=0.0, x_max=1.0, backend="reference", loss_fusion=True)
    out = fused(net, x, y, radii)
    certified = (out.ibp_max_z < 0) | (out.bound < math.log(2))
    torch.testing.assert_close(res.verified_error, (~certified).to(x.dtype).mean(1))
    assert 0 < int(certified.sum()) < certified.numel() and bool((out.bound < math.log(2)).any())  # all kinds
    for i, r in enumerate(radii.tolist()):
        adv, success = pgd_attack(net, x, y, r, steps=20)
        assert not bool((success & certified[i]).any())


# ----------------------------------------------------------------------------- gradients and backends
@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_gradcheck_of_the_fused_bound(beta):
    net, x, y = make_case("mlp", seed=57, batch=3)
    params = [p for p in net.parameters()]

    # gradcheck needs a function of its inputs: a copy of the net whose parameters are those inputs
    names = [n for n, _ in net.named_parameters()]

    def f(*ps):
        state = dict(zip(names, ps))
        wrapped = _Functional(net, state)
        return gmbound.BoundedSequential(wrapped.net).fused_cross_entropy(
            x, y, torch.tensor([0.05, 0.2], dtype=x.dtype), beta=beta, x_min=0.0, x_max=1.0,
            backend="reference").bound
    inputs = tuple(p.detach().clone().requires_grad_(True) for p in params)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5)


class _Functional:
    """A copy of ``net`` whose parameters are the given tensors (so gradcheck sees them as inputs)."""

    def __init__(self, net, state):
        import copy
        self.net = copy.deepcopy(net)
        for name, value in state.items():
            module_name, _, attr = name.rpartition(".")
            module = self.net.get_submodule(module_name)
            delattr(module, attr)
            setattr(module, attr, value)


@needs_extension
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name,make", [("cnn_bn", make_case), ("resnet", make_graph_case), ("mlp", make_case)])
@pytest.mark.parametrize("stochastic", [False, True])
def test_compiled_equals_reference(name, make, dtype, stochastic):
    net, x, y = make(name, seed=58, batch=5)
    net, x = net.to(dtype), x.to(dtype)
    net.train()  # train-mode BatchNorm: the batch's statistics, on both paths
    grads, values = [], []
    for backend in ("reference", "cpu"):
        g = torch.Generator().manual_seed(5)
        res = gm_loss(net, x, y, 0.2, n_radii=6, beta=0.6, x_min=0.0, x_max=1.0, stochastic=stochastic, generator=g,
                      backend=backend, loss_fusion=True)
        net.zero_grad()
        res.loss.backward()
        values.append(res.loss.detach())
        grads.append([p.grad.clone() for p in net.parameters()])
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-5)
    torch.testing.assert_close(values[1], values[0], **tol)
    for a, b in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, b, **tol)


# ----------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale", [1e2, 1e4])
def test_very_large_margins_give_finite_sound_values_and_gradients(scale, backend):
    """float32, logits of size ``scale``: the shift m keeps exp in range, the CE bound stays >= the clean CE."""
    net, x, y = make_case("cnn_bn", seed=59, batch=8)
    net, x = net.float(), x.float()
    with torch.no_grad():
        net[-1].weight.mul_(scale)
        net[-1].bias.mul_(scale)
        logits = net(x)
    y_right = logits.argmax(1)          # huge positive margins: CE ~ 0
    y_wrong = logits.argmin(1)          # huge negative margins: CE ~ scale
    for yy in (y_right, y_wrong):
        for eps in (1e-4, 0.05, 0.5):
            out = fused(net, x, yy, eps, beta=0.5, backend=backend)
            assert bool(torch.isfinite(out.bound).all())
            clean = F.cross_entropy(net(x), yy, reduction="none")
            assert bool((out.bound[0] >= clean.detach() * (1 - 1e-6)).all())
            net.zero_grad()
            res = gm_loss(net, x, yy, eps, n_radii=3, x_min=0.0, x_max=1.0, backend=backend, loss_fusion=True)
            res.loss.backward()
            assert torch.isfinite(res.loss) and all(bool(torch.isfinite(p.grad).all()) for p in net.parameters())


def test_chord_slope_is_accurate_for_narrow_and_wide_intervals():
    lo = torch.tensor([-3.0, -3.0, -3.0, -200.0, 0.0], dtype=torch.float64)
    hi = lo + torch.tensor([0.0, 1e-9, 1e-3, 199.0, 0.0], dtype=torch.float64)
    want = torch.tensor([math.exp(-3.0), math.exp(-3.0) * (1 + 5e-10), (math.exp(-2.999) - math.exp(-3)) / 1e-3,
                         (math.exp(-1.0) - math.exp(-200.0)) / 199.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(exp_chord_slope(lo, hi), want, rtol=1e-9, atol=0)
    # float32: no overflow for wide intervals (e^199 does not fit), no cancellation for narrow ones
    k32 = exp_chord_slope(lo.float(), hi.float())
    assert bool(torch.isfinite(k32).all())
    torch.testing.assert_close(k32.double(), want, rtol=1e-5, atol=0)
    # both branches (narrow below w = 1e-4) and across the switch
    w = torch.tensor([2e-5, 9.99999e-5, 1.00001e-4, 1e-3, 5.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: exp_chord_slope(torch.zeros_like(t) - 1, t - 1), (w,), eps=1e-8)


def test_ibp_form_of_the_bound_is_logsumexp_of_the_upper_bounds():
    zl = torch.tensor([[-3.0, -1.0, 2.0]], dtype=torch.float64)
    zu = torch.tensor([[-2.0, 0.5, 4.0]], dtype=torch.float64)
    y = torch.tensor([1])
    got = fused_cross_entropy_bound(zl, zu, y, 4, 0.0, None)
    want = torch.logsumexp(torch.tensor([0.0, -2.0, 0.5, 4.0], dtype=torch.float64), 0)
    torch.testing.assert_close(got, want.view(1))


def test_refusals():
    net, x, y = make_case("mlp", seed=60, batch=3)
    with pytest.raises(gmbound.BoundInputError, match="full CROWN"):
        gmbound.BoundedSequential(net).fused_cross_entropy(x, y, 0.1, method="crown")
    with pytest.raises(gmbound.BoundInputError, match="labels"):
        gmbound.BoundedSequential(net).fused_cross_entropy(x, y + 10, 0.1)


# ----------------------------------------------------------------------------- config and CLI
def test_config_key_defaults_off_and_the_cli_flag_sets_it(monkeypatch, tmp_path):
    from gmbound import cli, config
    from gmbound import train as train_module
    assert config.DEFAULTS["train"]["loss_fusion"] is False  # old checkpoints resume unchanged
    assert config.config_diff({"train": {}}, {"train": {"loss_fusion": False}}) == []
    seen = {}

    def fake_train(cfg, **kw):
        seen["cfg"] = cfg
        raise SystemExit(0)
    monkeypatch.setattr(train_module, "train", fake_train)
    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    base = ["train", "--config", str(demo), f"out_dir={tmp_path}"]
    for extra, want in (([], False), (["--loss-fusion"], True), (["train.loss_fusion=true"], True)):
        seen.clear()
        with pytest.raises(SystemExit):
            cli.main(base + extra)
        assert seen["cfg"]["train"]["loss_fusion"] is want


def test_compute_loss_passes_loss_fusion_on():
    from gmbound.schedules import ScheduleValues
    from gmbound.train import compute_loss
    net, x, y = make_case("cnn", seed=61, batch=4)
    tcfg = dict(method="gm-crown-ibp", n_radii=3, stochastic=False, weights="inverse", backend="reference")
    values = ScheduleValues(eps=0.2, kappa=0.5, beta=1.0)
    bounded = gmbound.BoundedSequential(net)
    plain = compute_loss(bounded, x, y, values, dict(tcfg, loss_fusion=False), 0.0, 1.0)
    fusion = compute_loss(bounded, x, y, values, dict(tcfg, loss_fusion=True), 0.0, 1.0)
    want = gm_loss(net, x, y, 0.2, n_radii=3, beta=1.0, x_min=0.0, x_max=1.0, backend="reference", loss_fusion=True)
    torch.testing.assert_close(fusion.loss, want.loss)
    assert not torch.allclose(plain.loss, fusion.loss)

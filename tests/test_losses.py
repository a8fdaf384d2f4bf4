"""GM loss, radius weights and CROWN-IBP schedules."""
import math

import pytest
import torch
import torch.nn.functional as F

import gmbound
from nets import make_case


@pytest.mark.parametrize("n", [1, 2, 5, 10, 16])
@pytest.mark.parametrize("shape", sorted(gmbound.WEIGHT_SHAPES))
def test_weights_sum_to_one_and_are_shaped_as_named(n, shape):
    c = gmbound.radius_weights(n, shape, dtype=torch.float64)
    assert c.shape == (n,)
    assert abs(float(c.sum()) - 1.0) < 1e-12
    diffs = c[1:] - c[:-1]
    if shape == "uniform" or n == 1:
        torch.testing.assert_close(c, torch.full((n,), 1.0 / n, dtype=torch.float64))
    elif shape == "increasing":
        assert (diffs > 0).all()
    else:
        assert (diffs < 0).all()


def test_inverse_weights_are_proportional_to_one_over_the_radius():
    radii = gmbound.gm_radii(0.3, 4, dtype=torch.float64)
    torch.testing.assert_close(radii, torch.tensor([0.075, 0.15, 0.225, 0.3], dtype=torch.float64))
    c = gmbound.radius_weights(4, "inverse", dtype=torch.float64)
    expected = (1 / radii) / (1 / radii).sum()  # the paper's c_i = (1/r_i) / sum_j (1/r_j)
    torch.testing.assert_close(c, expected)
    # 1/1 : 1/2 : 1/3 : 1/4 normalised by 25/12
    torch.testing.assert_close(c, torch.tensor([12, 6, 4, 3], dtype=torch.float64) / 25)


def test_callable_weights_and_bad_weights():
    c = gmbound.radius_weights(3, lambda t: torch.exp(-t), dtype=torch.float64)
    e = torch.exp(-torch.tensor([1 / 3, 2 / 3, 1.0], dtype=torch.float64))
    torch.testing.assert_close(c, e / e.sum())
    with pytest.raises(gmbound.BoundInputError, match="unknown weight shape"):
        gmbound.radius_weights(3, "cubic")
    with pytest.raises(gmbound.BoundInputError, match="non-negative"):
        gmbound.radius_weights(3, lambda t: -t)
    with pytest.raises(gmbound.BoundInputError, match="3 weights"):
        gmbound.radius_weights(3, lambda t: t[:2])


def _plain_crown_ibp_loss(net, x, y, eps, kappa, beta):
    """CROWN-IBP's training loss written out directly: kappa CE(f(x)) + (1 - kappa) CE(-m)."""
    n = net(x).shape[1]
    C = gmbound.margin_spec(y, n, dtype=x.dtype)
    m = gmbound.BoundedSequential(net).bounds(x, eps, C, method="crown-ibp", beta=beta, x_min=0, x_max=1,
                                              bound_upper=False).lower[0]        # [B, n - 1]
    logits = torch.zeros(x.shape[0], n, dtype=x.dtype)
    for b in range(x.shape[0]):
        others = [j for j in range(n) if j != int(y[b])]
        logits[b, others] = -m[b]
    return kappa * F.cross_entropy(net(x), y) + (1 - kappa) * F.cross_entropy(logits, y)


@pytest.mark.parametrize("name", ["mlp", "cnn_bn"])
def test_n_equal_one_is_the_plain_crown_ibp_loss(name):
    net, x, y = make_case(name, 0, batch=5)
    for weights in ("inverse", "uniform"):
        r = gmbound.gm_loss(net, x, y, 0.1, n_radii=1, weights=weights, kappa=0.4, beta=0.7, x_min=0, x_max=1)
        torch.testing.assert_close(r.loss, _plain_crown_ibp_loss(net, x, y, 0.1, 0.4, 0.7))


def test_gm_loss_is_the_weighted_sum_over_radii():
    net, x, y = make_case("cnn", 1, batch=4)
    eps, n, kappa = 0.2, 4, 0.25
    r = gmbound.gm_loss(net, x, y, eps, n_radii=n, weights="inverse", kappa=kappa, x_min=0, x_max=1)
    c = gmbound.radius_weights(n, "inverse", dtype=torch.float64)
    per_radius = [(_plain_crown_ibp_loss(net, x, y, eps * (i + 1) / n, 0.0, 1.0)) for i in range(n)]
    expected_rob = sum(ci * li for ci, li in zip(c, per_radius))
    torch.testing.assert_close(r.robust_loss, expected_rob)
    torch.testing.assert_close(r.loss, kappa * F.cross_entropy(net(x), y) + (1 - kappa) * expected_rob)


def test_statistics_come_with_the_loss():
    net, x, y = make_case("mlp", 2, batch=6)
    r = gmbound.gm_loss(net, x, y, 0.3, n_radii=3, x_min=0, x_max=1)
    bnet = gmbound.BoundedSequential(net)
    m = bnet.margin_bounds(x, y, r.radii, x_min=0, x_max=1)
    torch.testing.assert_close(r.verified_error, (m <= 0).any(-1).double().mean(1))
    assert float(r.natural_error) == float((net(x).argmax(1) != y).double().mean())
    r_ibp = gmbound.gm_loss(net, x, y, 0.3, n_radii=3, method="ibp", x_min=0, x_max=1)
    assert (r_ibp.verified_error[1:] >= r_ibp.verified_error[:-1]).all()  # IBP bounds are nested in r


def test_stochastic_grt_is_unbiased():
    net, x, y = make_case("mlp", 3, batch=2)
    exact = gmbound.gm_loss(net, x, y, 0.4, n_radii=3, kappa=0.0, x_min=0, x_max=1).robust_loss.detach()
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([gmbound.gm_loss(net, x, y, 0.4, n_radii=3, kappa=0.0, x_min=0, x_max=1,
                                         stochastic=True, generator=g).robust_loss.detach() for _ in range(3000)])
    # the mean of 3000 draws is within 5 standard errors of the weighted sum
    assert abs(float(draws.mean() - exact)) < 5 * float(draws.std()) / math.sqrt(len(draws))


def test_zero_eps_robust_loss_equals_natural_loss():
    net, x, y = make_case("cnn", 4, batch=5)
    r0 = gmbound.gm_loss(net, x, y, 0.0, n_radii=4, kappa=0.5, x_min=0, x_max=1)
    torch.testing.assert_close(r0.loss, F.cross_entropy(net(x), y))
    # and the shortcut agrees with a real bound computation at a radius of zero
    m = gmbound.BoundedSequential(net).margin_bounds(x, y, [0.0], x_min=0, x_max=1)[0]
    logits = gmbound.robust_logits(m, y, net(x).shape[1])
    torch.testing.assert_close(F.cross_entropy(logits, y), r0.robust_loss)


def test_robust_logits_put_zero_at_the_label():
    y = torch.tensor([0, 2])
    m = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    torch.testing.assert_close(gmbound.robust_logits(m, y, 3), torch.tensor([[0.0, -1.0, -2.0], [-3.0, -4.0, 0.0]]))
    C = gmbound.margin_spec(y, 3)
    torch.testing.assert_close(C[1], torch.tensor([[-1.0, 0.0, 1.0], [0.0, -1.0, 1.0]]))


def test_bad_loss_arguments():
    net, x, y = make_case("mlp", 0)
    with pytest.raises(gmbound.BoundInputError, match="kappa"):
        gmbound.gm_loss(net, x, y, 0.1, kappa=1.5)
    with pytest.raises(gmbound.BoundInputError, match="n_radii"):
        gmbound.gm_loss(net, x, y, 0.1, n_radii=0)
    with pytest.raises(gmbound.BoundInputError, match="non-negative"):
        gmbound.gm_loss(net, x, y, -0.1)
    with pytest.raises(gmbound.BoundInputError, match="finite"):
        gmbound.gm_loss(net, x, y, float("nan"))


# ----------------------------------------------------------------------------- schedules
def test_linear_schedule_values():
    s = gmbound.CrownIBPSchedule(eps_train=0.4, warmup_steps=10, ramp_steps=20, kappa_start=1.0, kappa_end=0.5,
                                 beta_start=1.0, beta_end=0.0)
    assert s(0) == gmbound.ScheduleValues(0.0, 1.0, 1.0)
    assert s(9).eps == 0.0
    v = s(20)  # half-way up the ramp
    assert v.eps == pytest.approx(0.2) and v.kappa == pytest.approx(0.75) and v.beta == pytest.approx(0.5)
    # CROWN-IBP's form: beta = (eps_max - eps (1 - beta_final)) / eps_max
    assert v.beta == pytest.approx((0.4 - v.eps * (1 - 0.0)) / 0.4)
    assert s(30) == s(1000) == gmbound.ScheduleValues(0.4, 0.5, 0.0)


def test_smooth_ramp_is_continuous_monotone_and_ends_at_one():
    xs = [i / 1000 for i in range(1001)]
    ys = [gmbound.smooth_ramp(t) for t in xs]
    assert ys[0] == 0.0 and ys[-1] == pytest.approx(1.0)
    assert all(b >= a for a, b in zip(ys, ys[1:]))
    assert max(b - a for a, b in zip(ys, ys[1:])) < 0.003  # no jump at the mid point
    assert gmbound.smooth_ramp(0.1) < gmbound.linear_ramp(0.1)  # starts slower than linear


def test_bad_schedules():
    with pytest.raises(ValueError, match="ramp"):
        gmbound.CrownIBPSchedule(0.3, 1, 1, ramp="cosine")
    with pytest.raises(ValueError, match="kappa_end"):
        gmbound.CrownIBPSchedule(0.3, 1, 1, kappa_end=2.0)

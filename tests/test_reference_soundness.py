"""Reference engine: soundness by sampling, and the structural properties of the bounds."""
import pytest
import torch

import gmbound
from nets import NETS, make_case, sample_box
from backends import BACKENDS

EPS = [0.0, 0.02, 0.08, 0.3]
METHODS = ["ibp", "crown-ibp", "crown"]
TOL = 1e-9  # float64: the bounds may differ from exact values only by rounding


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("method", METHODS)
def test_every_sampled_output_lies_within_the_bounds(name, seed, method):
    net, x, y = make_case(name, seed)
    bnet = gmbound.BoundedSequential(net)
    eps = torch.tensor(EPS, dtype=torch.float64)
    C = gmbound.margin_spec(y, net(x).shape[1], dtype=torch.float64)
    with torch.no_grad():
        spec_b = bnet.bounds(x, eps, C, method=method, x_min=0.0, x_max=1.0)
        logit_b = bnet.bounds(x, eps, method=method, x_min=0.0, x_max=1.0)
        for i, r in enumerate(EPS):
            pts = sample_box(x, r, 1000, 0.0, 1.0, seed=seed * 10 + i)        # [n, B, *S]
            out = net(pts.flatten(0, 1)).unflatten(0, pts.shape[:2])            # [n, B, n_out]
            margins = torch.einsum("bkc,nbc->nbk", C, out)
            assert (margins >= spec_b.lower[i] - TOL).all()
            assert (margins <= spec_b.upper[i] + TOL).all()
            assert (out >= logit_b.lower[i] - TOL).all()
            assert (out <= logit_b.upper[i] + TOL).all()
            if r == 0:  # a point box: bounds are the exact values
                torch.testing.assert_close(logit_b.lower[i], net(x))
                torch.testing.assert_close(logit_b.upper[i], net(x))





@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("method", METHODS)
def test_boxes_past_half_the_domain_hold_its_midpoint(name, method, backend):
    """With the box clipped to [0, 1], every radius >= 0.5 puts the all-0.5 input g in every sample's box
    (results/mnist_table3_full: why robust error at eps 0.5 has a floor). The bounds must hold f(g)
    for every sample, and no sample labelled other than argmax f(g) may be certified there."""
    net, x, y = make_case(name, 4, batch=5)
    bnet = gmbound.BoundedSequential(net)
    radii = torch.tensor([0.5, 0.75, 3.0], dtype=torch.float64)
    with torch.no_grad():
        f_mid = net(torch.full_like(x[:1], 0.5))[0]                             # [n_out]
        logit_b = bnet.bounds(x, radii, method=method, x_min=0.0, x_max=1.0, backend=backend)
        m = bnet.margin_bounds(x, y, radii, method=method, x_min=0.0, x_max=1.0, backend=backend)
    assert (logit_b.lower <= f_mid + TOL).all() and (logit_b.upper >= f_mid - TOL).all()
    certified = (m > 0).all(-1)                                                 # [N, B]
    assert not certified[:, y != f_mid.argmax()].any()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", METHODS)
def test_half_domain_boxes_of_binary_inputs_have_the_midpoint_as_a_vertex(method, backend):
    """The exact case of the test above: for x in {0, 1} and radius 0.5 the clipped box is [0, 0.5] or
    [0.5, 1] per pixel, so g = 0.5 is a vertex, and an identity layer's bounds touch f(g) exactly."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 12)).double()
    with torch.no_grad():
        net[1].weight.copy_(torch.eye(12))
        net[1].bias.zero_()
    x = (torch.rand(4, 12, dtype=torch.float64) > 0.5).to(torch.float64)
    b = gmbound.BoundedSequential(net).bounds(x, [0.5], method=method, x_min=0.0, x_max=1.0, backend=backend)
    torch.testing.assert_close(b.lower[0], torch.where(x == 1, 0.5, 0.0).to(x.dtype), rtol=0, atol=TOL)
    torch.testing.assert_close(b.upper[0], torch.where(x == 0, 0.5, 1.0).to(x.dtype), rtol=0, atol=TOL)

@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("method", ["ibp", "crown-ibp", "crown"])
def test_n_radius_call_equals_n_single_radius_calls(name, method):
    net, x, y = make_case(name, 5)
    bnet = gmbound.BoundedSequential(net)
    C = gmbound.margin_spec(y, net(x).shape[1], dtype=torch.float64)
    many = bnet.bounds(x, torch.tensor(EPS, dtype=torch.float64), C, method=method, beta=0.7, x_min=0, x_max=1)
    for i, r in enumerate(EPS):
        one = bnet.bounds(x, r, C, method=method, beta=0.7, x_min=0, x_max=1)
        torch.testing.assert_close(many.lower[i], one.lower[0])
        torch.testing.assert_close(many.upper[i], one.upper[0])


@pytest.mark.parametrize("name", sorted(NETS))
def test_per_sample_radii_equal_separate_calls(name):
    net, x, y = make_case(name, 6)
    bnet = gmbound.BoundedSequential(net)
    radii = torch.tensor([[0.01, 0.2, 0.05], [0.1, 0.0, 0.3]], dtype=torch.float64)  # [N=2, B=3]
    both = bnet.bounds(x, radii, method="crown-ibp", x_min=0, x_max=1)
    for n in range(2):
        for b in range(3):
            one = bnet.bounds(x[b:b + 1], float(radii[n, b]), method="crown-ibp", x_min=0, x_max=1)
            torch.testing.assert_close(both.lower[n, b], one.lower[0, 0])


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("seed", [0, 1])
def test_ibp_bounds_are_nested_in_the_radius(name, seed):
    # Interval arithmetic is inclusion-monotone, so IBP bounds grow with r. (CROWN's adaptive
    # lower slope can switch with r, so CROWN bounds need not be nested; not asserted.)
    net, x, y = make_case(name, seed)
    eps = torch.linspace(0, 0.5, 11, dtype=torch.float64)
    b = gmbound.BoundedSequential(net).bounds(x, eps, method="ibp", x_min=0, x_max=1)
    assert (b.lower[1:] <= b.lower[:-1] + TOL).all()
    assert (b.upper[1:] >= b.upper[:-1] - TOL).all()


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_full_crown_at_least_as_tight_as_crown_ibp(name, seed):
    net, x, y = make_case(name, seed)
    bnet = gmbound.BoundedSequential(net)
    eps = torch.tensor([0.05, 0.3], dtype=torch.float64)
    C = gmbound.margin_spec(y, net(x).shape[1], dtype=torch.float64)
    ci = bnet.bounds(x, eps, C, method="crown-ibp", x_min=0, x_max=1)
    fc = bnet.bounds(x, eps, C, method="crown", x_min=0, x_max=1)
    assert (fc.lower >= ci.lower - TOL).all()
    assert (fc.upper <= ci.upper + TOL).all()
    assert (fc.upper - fc.lower).sum() < (ci.upper - ci.lower).sum()  # and strictly tighter overall


def test_full_crown_chunking_does_not_change_the_bounds():
    net, x, y = make_case("cnn", 0)
    bnet = gmbound.BoundedSequential(net)
    a = bnet.bounds(x, [0.05, 0.1], method="crown", x_min=0, x_max=1, crown_chunk=7)
    b = bnet.bounds(x, [0.05, 0.1], method="crown", x_min=0, x_max=1, crown_chunk=10_000)
    torch.testing.assert_close(a.lower, b.lower)
    torch.testing.assert_close(a.upper, b.upper)


def test_train_mode_batchnorm_bounds_use_the_batch_statistics():
    net, x, y = make_case("cnn_bn", 0, batch=8)
    eval_copy = make_case("cnn_bn", 0, batch=8)[0]
    net.train()
    before = [m.running_mean.clone() for m in net if hasattr(m, "running_mean")]
    bnet = gmbound.BoundedSequential(net)
    train_b = bnet.bounds(x, [0.05], method="crown-ibp", x_min=0, x_max=1)
    after = [m.running_mean for m in net if hasattr(m, "running_mean")]
    assert all(torch.equal(a, b) for a, b in zip(before, after)), "bounds() must not touch running stats"
    # an eval-mode copy whose running statistics are this batch's statistics bounds identically
    a = x
    with torch.no_grad():
        for m_train, m_eval in zip(net, eval_copy):
            if isinstance(m_train, torch.nn.modules.batchnorm._BatchNorm):
                dims = [0] + list(range(2, a.dim()))
                m_eval.running_mean.copy_(a.mean(dims))
                m_eval.running_var.copy_(a.var(dims, unbiased=False))
            a = m_eval(a)
    eval_b = gmbound.BoundedSequential(eval_copy).bounds(x, [0.05], method="crown-ibp", x_min=0, x_max=1)
    torch.testing.assert_close(train_b.lower, eval_b.lower)
    torch.testing.assert_close(train_b.upper, eval_b.upper)

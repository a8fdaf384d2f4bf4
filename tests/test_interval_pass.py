"""A kept interval pass (``BoundedSequential.interval_pass``) gives what ``bounds`` gives, from one pass.

auto_LiRPA's trainers call IBP and then CROWN-IBP on the same input; ``gmbound.compat`` serves
both from one kept pass, so the pair costs one interval pass and one autograd graph through it.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gmbound import propagation
from gmbound.bounded import BoundedSequential
from gmbound.compat import BoundedModule, BoundedTensor, PerturbationLpNorm
from gmbound.validation import BoundInputError
from nets import make_case, sample_box
from backends import BACKENDS

TIGHT = dict(rtol=1e-12, atol=1e-12)


def _spec(net, x, seed):
    g = torch.Generator().manual_seed(seed)
    n_out = net(x).shape[1]
    return torch.randn(x.shape[0], 3, n_out, generator=g, dtype=x.dtype)


@pytest.fixture
def count_passes(monkeypatch):
    """Counts the interval passes up to the last ReLUs."""
    calls = []
    inner = propagation.relu_intervals

    def counted(*args, **kwargs):
        calls.append(1)
        return inner(*args, **kwargs)
    monkeypatch.setattr(propagation, "relu_intervals", counted)
    return calls


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,batch,radii", [("mlp", 3, [0.05]), ("cnn", 4, [0.02, 0.1]), ("cnn_bn", 2, [0.07])])
def test_kept_pass_equals_bounds_and_its_gradients(name, batch, radii, backend):
    net, x, _ = make_case(name, seed=7, batch=batch)
    bnet = BoundedSequential(net)
    C = _spec(net, x, seed=3)
    eps = torch.tensor(radii, dtype=torch.float64)
    kept = bnet.interval_pass(x, eps, x_min=0.0, x_max=1.0, backend=backend)
    for method, c, upper in [("ibp", C, True), ("crown-ibp", C, True), ("crown-ibp", C, False), ("ibp", None, True)]:
        want = bnet.bounds(x, eps, c, method=method, x_min=0.0, x_max=1.0, bound_upper=upper, backend=backend)
        got = kept.bounds(c, method=method, bound_upper=upper)
        torch.testing.assert_close(got.lower, want.lower, **TIGHT)
        if upper:
            torch.testing.assert_close(got.upper, want.upper, **TIGHT)
        else:
            assert got.upper is None
    # the gradient of IBP + CROWN-IBP through the shared pass is that of two separate calls
    params = [p for p in net.parameters() if p.requires_grad]
    kept = bnet.interval_pass(x, eps, x_min=0.0, x_max=1.0, backend=backend)
    shared = kept.bounds(C).lower.sum() + kept.bounds(C, method="crown-ibp").lower.sum()
    g_shared = torch.autograd.grad(shared, params)
    separate = (bnet.bounds(x, eps, C, x_min=0.0, x_max=1.0, backend=backend).lower.sum()
                + bnet.bounds(x, eps, C, method="crown-ibp", x_min=0.0, x_max=1.0, backend=backend).lower.sum())
    for a, b in zip(g_shared, torch.autograd.grad(separate, params)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kept_pass_bounds_are_sound(backend):
    net, x, _ = make_case("cnn", seed=11, batch=3)
    C = _spec(net, x, seed=5)
    kept = BoundedSequential(net).interval_pass(x, 0.08, x_min=0.0, x_max=1.0, backend=backend)
    points = sample_box(x, 0.08, 200, 0.0, 1.0, seed=9)
    with torch.no_grad():
        out = torch.einsum("bko,nbo->nbk", C, net(points.flatten(0, 1)).view(200, 3, -1))
    for method in ("ibp", "crown-ibp"):
        b = kept.bounds(C, method=method)
        assert (out >= b.lower[0] - 1e-9).all() and (out <= b.upper[0] + 1e-9).all(), method


def test_kept_pass_refuses_full_crown_and_checks_the_spec():
    net, x, _ = make_case("mlp", seed=1)
    kept = BoundedSequential(net).interval_pass(x, 0.1)
    with pytest.raises(BoundInputError, match="full CROWN"):
        kept.bounds(None, method="crown")
    with pytest.raises(BoundInputError):
        kept.bounds(torch.zeros(x.shape[0], 2, 99, dtype=x.dtype))


def test_empty_batch_gives_empty_bounds():
    net, x, _ = make_case("mlp", seed=1)
    b = BoundedSequential(net).interval_pass(x[:0], 0.1).bounds(_spec(net, x, 2)[:0], method="crown-ibp")
    assert b.lower.shape == (1, 0, 3) and b.upper.shape == (1, 0, 3)


def test_compat_ibp_then_backward_runs_one_interval_pass(count_passes):
    """The trainers' pair IBP, then "backward" on the same input: one pass; a new IBP call runs a fresh one."""
    net, x, y = make_case("cnn", seed=2, batch=3)
    model = BoundedModule(net, x)
    bx = BoundedTensor(x, PerturbationLpNorm(norm=np.inf, eps=0.05))
    C = _spec(net, x, seed=4)
    model.compute_bounds(x=(bx,), IBP=True, C=C, method=None)
    model.compute_bounds(IBP=False, C=C, method="backward", bound_upper=False)
    assert len(count_passes) == 1
    model.compute_bounds(IBP=True, C=C, method=None)  # IBP is recomputed on every IBP call, as in auto_LiRPA
    assert len(count_passes) == 2
    model.compute_bounds(x=(bx,), IBP=True, C=C, method="backward")  # CROWN-IBP in one call: one pass
    assert len(count_passes) == 3


@pytest.fixture
def count_clean_forwards(monkeypatch):
    calls = []
    inner = BoundedSequential._clean_forward

    def counted(graph, x, update_running_stats=True):
        calls.append(update_running_stats)
        return inner(graph, x, update_running_stats)
    monkeypatch.setattr(BoundedSequential, "_clean_forward", staticmethod(counted))
    return calls


def test_batch_stats_of_the_forward_serve_the_pass(count_clean_forwards):
    """model(x) then IBP / CROWN-IBP on the same x in train mode: one clean pass, and the bounds of a fresh one."""
    net, x, _ = make_case("cnn_bn", seed=5, batch=4)
    net.train()
    bnet = BoundedSequential(net)
    C = _spec(net, x, seed=6)
    out, stats = bnet.forward_with_stats(x)
    torch.testing.assert_close(out, net(x))
    view = x.view_as(x)  # another tensor object on the same data, as BoundedTensor.plain() gives
    kept = bnet.interval_pass(view, 0.05, stats=stats)
    assert count_clean_forwards == [True]  # the forward's own pass only (net(x) above is the module's)
    fresh = bnet.bounds(x, 0.05, C, method="crown-ibp")
    torch.testing.assert_close(kept.bounds(C, method="crown-ibp").lower, fresh.lower, **TIGHT)
    # the input written to in between, or another input: its own clean pass
    bnet.interval_pass(x + 0.0, 0.05, stats=stats)
    x.add_(0.0)
    bnet.interval_pass(x, 0.05, stats=stats)
    assert count_clean_forwards == [True, False, False, False]


def test_compat_forward_then_bounds_runs_one_clean_pass(count_clean_forwards):
    net, x, _ = make_case("cnn_bn", seed=8, batch=4)
    model = BoundedModule(net.train(), x)
    bx = BoundedTensor(x, PerturbationLpNorm(norm=np.inf, eps=0.05))
    C = _spec(net, x, seed=2)
    model(bx)
    model.compute_bounds(IBP=True, C=C, method=None)
    model.compute_bounds(IBP=False, C=C, method="backward", bound_upper=False)
    assert count_clean_forwards == [True]

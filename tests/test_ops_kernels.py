"""Leaky ReLU and max pooling inside the drivers on the compiled kernels (issue 23, part 2).

* the kernels are actually used: leaky ReLU through the (fused) ReLU kernels with its slope, max
  pooling's CROWN step through ``max_pool2d_relax``; the generic relaxation ops are not called;
* bounds and the GM loss's weight gradients equal the reference path's (float64), on every device;
* the compiled bounds are sound by sampling and PGD, in float64 and float32.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import gmbound
from gmbound.engine import compiled
from ops_nets import make_ops_case
from test_kernels import DEVICES
from test_ops_coverage import RADII, check_sound
from backends import needs_extension

pytestmark = needs_extension

KERNEL_NETS = ["leaky_relu", "maxpool", "maxpool_overlapping", "maxpool_dilated", "leaky_maxpool_cnn"]


class _Spy:
    """Stands in for ``torch.ops.gmbound`` in ``gmbound.engine.compiled``: records each op and its negative slope."""

    def __init__(self, ops):
        self.ops, self.calls = ops, []

    def __getattr__(self, name):
        op = getattr(self.ops, name)

        def call(*args):
            slope = args[-1] if isinstance(args[-1], float) else None
            self.calls.append((name, slope))
            return op(*args)
        return call


def test_leaky_relu_and_max_pool_run_on_their_kernels(monkeypatch):
    net, x, _ = make_ops_case("leaky_maxpool_cnn", 0)
    spy = _Spy(compiled._ops)
    monkeypatch.setattr(compiled, "_ops", spy)
    generic = []
    monkeypatch.setattr(compiled, "relaxation_backward", lambda *a: generic.append(a))
    gmbound.BoundedSequential(net).bounds(x, RADII, method="crown", x_min=0, x_max=1, backend="cpu")
    assert not generic, "leaky ReLU or max pooling took the generic relaxation"
    names = {name for name, _ in spy.calls}
    assert "max_pool2d_relax" in names
    # F.leaky_relu(conv1, 0.1): the slope reaches the ReLU kernels (fused with conv1 where possible)
    assert any(slope == 0.1 and name in ("relu_relax", "crown_conv2d_step") for name, slope in spy.calls), spy.calls


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", KERNEL_NETS)
def test_bounds_and_gm_loss_gradients_match_the_reference(device, name):
    net, x, y = make_ops_case(name, 1, batch=4)
    net, x, y = net.to(device), x.to(device), y.to(device)
    bnet = gmbound.BoundedSequential(net)
    for method in ("ibp", "crown-ibp", "crown"):
        want = bnet.bounds(x, RADII, method=method, x_min=0, x_max=1, backend="reference")
        got = bnet.bounds(x, RADII, method=method, x_min=0, x_max=1, backend=device)
        torch.testing.assert_close(got.lower, want.lower, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(got.upper, want.upper, rtol=1e-10, atol=1e-10)
    grads = {}
    for backend in (device, "reference"):
        net.zero_grad()
        res = gmbound.gm_loss(net, x, y, 0.2, n_radii=4, kappa=0.3, beta=0.5, x_min=0.0, x_max=1.0, backend=backend)
        res.loss.backward()
        grads[backend] = (res.loss.detach(), [p.grad.clone() for p in net.parameters()])
    torch.testing.assert_close(grads[device][0], grads["reference"][0], rtol=1e-9, atol=1e-9)
    for a, b in zip(grads[device][1], grads["reference"][1]):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", KERNEL_NETS)
def test_compiled_bounds_are_sound(name, dtype):
    net, x, _ = make_ops_case(name, 2, batch=3)
    bounds = gmbound.BoundedSequential(net.to(dtype)).bounds(x.to(dtype), RADII, method="crown", x_min=0, x_max=1,
                                                            backend="cpu")
    if dtype == torch.float32:  # float32 bounds of a float64 network: widen by float32 rounding before checking
        pad = 1e-4 * (1 + bounds.upper.abs().amax())
        bounds = type(bounds)(bounds.lower.double() - pad, bounds.upper.double() + pad)
    assert check_sound(net.double(), x, bounds, RADII, 400, seed=5) > 0


def test_a_leaky_relu_cnn_trains_on_the_kernels():
    """A LeakyReLU / MaxPool CNN (the usual shape) takes a few GM-CROWN-IBP steps on the compiled backend."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.LeakyReLU(0.01), nn.MaxPool2d(2), nn.Conv2d(4, 8, 3),
                        nn.LeakyReLU(0.01), nn.Flatten(), nn.Linear(8 * 2 * 2, 10))
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        res = gmbound.gm_loss(net, x, y, 0.05, n_radii=4, kappa=0.5, beta=1.0, x_min=0.0, x_max=1.0, backend="cpu")
        res.loss.backward()
        opt.step()
        losses.append(float(res.loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]

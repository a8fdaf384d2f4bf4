"""Gradients of the bounds and of the GM loss against finite differences (float64, tiny nets)."""
import pytest
import torch
from torch import nn
from torch.func import functional_call

import gmbound


class _Closure(nn.Module):
    """Holds ``bnet`` so ``functional_call`` can swap its parameters for the ones gradcheck varies."""

    def __init__(self, bnet, fn):
        super().__init__()
        self.bnet, self.fn = bnet, fn

    def forward(self):
        return self.fn(self.bnet)


def _as_function_of_parameters(bnet, fn):
    names = ["bnet.model." + n for n, _ in bnet.model.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in bnet.model.parameters())
    closure = _Closure(bnet, fn)
    return (lambda *ps: functional_call(closure, dict(zip(names, ps)), args=())), params


def _tiny(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 2, 2, stride=1), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 3)).double().eval()


@pytest.mark.parametrize("method", ["ibp", "crown-ibp", "crown"])
@pytest.mark.parametrize("seed", [0, 1])
def test_bounds_gradcheck_in_the_parameters(method, seed):
    net = _tiny(seed)
    bnet = gmbound.BoundedSequential(net)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 1, 3, 3, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 2])
    eps = torch.tensor([0.05, 0.2], dtype=torch.float64)
    C = gmbound.margin_spec(y, 3, torch.float64)
    lower_upper, params = _as_function_of_parameters(
        bnet, lambda b: tuple(b.bounds(x, eps, C, method=method, beta=0.6, x_min=0.0, x_max=1.0)))
    assert torch.autograd.gradcheck(lower_upper, params, eps=1e-6, atol=1e-5)


def test_bounds_gradcheck_in_the_input():
    net = _tiny(3)
    bnet = gmbound.BoundedSequential(net)
    x = (0.2 + 0.6 * torch.rand(2, 1, 3, 3, dtype=torch.float64)).requires_grad_()
    eps = torch.tensor([0.05, 0.1], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda v: tuple(bnet.bounds(v, eps, method="crown-ibp", x_min=0, x_max=1)),
                                    (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("stochastic", [False, True])
def test_gm_loss_gradcheck(stochastic):
    net = _tiny(4)
    bnet = gmbound.BoundedSequential(net)
    x = torch.rand(3, 1, 3, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    loss, params = _as_function_of_parameters(
        bnet, lambda b: gmbound.gm_loss(b, x, y, 0.15, n_radii=3, kappa=0.3, beta=0.5, x_min=0, x_max=1,
                                        stochastic=stochastic, generator=torch.Generator().manual_seed(0)).loss)
    assert torch.autograd.gradcheck(loss, params, eps=1e-6, atol=1e-5)

"""L-inf PGD: stays in the clipped box, finds what exists on a linear model, nothing where nothing exists."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from gmbound.attacks import pgd_attack


def linear_case(seed=0, n=32, d=10, k=3):
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, k)).double()
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(k, d, generator=g, dtype=torch.float64))
        model[1].bias.copy_(torch.randn(k, generator=g, dtype=torch.float64))
    x = torch.rand(n, d, generator=g, dtype=torch.float64)
    y = model(x).argmax(1)  # correctly classified by construction
    w, b = model[1].weight, model[1].bias
    # exact L-inf robust radius of a linear classifier (no domain clipping): min_j m_j / ||w_y - w_j||_1
    diff = w[y][:, None, :] - w[None, :, :]                        # [n, k, d]
    margin = (diff * x[:, None, :]).sum(-1) + (b[y][:, None] - b[None, :])
    ratio = margin / diff.abs().sum(-1)
    ratio[torch.arange(n), y] = float("inf")
    return model, x, y, ratio.min(1).values


@pytest.mark.parametrize("loss", ["ce", "margin"])
def test_pgd_finds_attacks_exactly_where_they_exist_on_a_linear_model(loss):
    # two classes: both losses ascend along w_j - w_y, so sign steps reach the optimal corner
    model, x, y, radius = linear_case(k=2)
    g = torch.Generator().manual_seed(0)
    _, above = pgd_attack(model, x, y, radius * 1.05, steps=50, x_min=None, x_max=None, loss=loss, generator=g)
    assert bool(above.all())
    _, below = pgd_attack(model, x, y, radius * 0.95, steps=50, restarts=3, x_min=None, x_max=None, loss=loss,
                          generator=g)
    assert not bool(below.any())


def test_pgd_never_succeeds_below_the_exact_radius_with_many_classes():
    model, x, y, radius = linear_case(seed=1, k=5)
    _, success = pgd_attack(model, x, y, radius * 0.99, steps=30, restarts=3, x_min=None, x_max=None)
    assert not bool(success.any())
    _, success = pgd_attack(model, x, y, radius * 1.5, steps=50, restarts=2, x_min=None, x_max=None)
    assert float(success.double().mean()) > 0.8


def test_pgd_stays_in_the_clipped_box_and_leaves_parameters_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    x = torch.rand(20, 1, 4, 4)
    y = torch.randint(0, 4, (20,))
    eps = 0.3
    x_adv, success = pgd_attack(model, x, y, eps, steps=10, restarts=2)
    assert ((x_adv - x).abs() <= eps + 1e-6).all()
    assert (x_adv >= 0).all() and (x_adv <= 1).all()
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():  # reported successes are real: the returned point is misclassified
        assert (model(x_adv[success]).argmax(1) != y[success]).all()


def test_pgd_at_zero_radius_is_the_clean_error():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    x, y = torch.rand(30, 16), torch.randint(0, 4, (30,))
    x_adv, success = pgd_attack(model, x, y, 0.0, steps=10)
    with torch.no_grad():
        assert torch.equal(success, model(x).argmax(1) != y)
    assert torch.equal(x_adv, x)


def test_pgd_per_sample_radii():
    model, x, y, radius = linear_case(seed=2, k=2)
    eps = torch.where(torch.arange(len(y)) % 2 == 0, radius * 1.1, radius * 0.9)
    _, success = pgd_attack(model, x, y, eps, steps=50, x_min=None, x_max=None)
    assert torch.equal(success, torch.arange(len(y)) % 2 == 0)


def test_pgd_rejects_bad_arguments():
    model, x, y, _ = linear_case()
    with pytest.raises(ValueError):
        pgd_attack(model, x, y, 0.1, loss="hinge")
    with pytest.raises(ValueError):
        pgd_attack(model, x, y, 0.1, restarts=0)
    with pytest.raises(ValueError):
        pgd_attack(model, x, y, -0.1)

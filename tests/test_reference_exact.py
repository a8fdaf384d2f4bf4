"""A two-neuron network whose IBP and CROWN bounds are computed by hand (see the comments)."""
import pytest
import torch
from torch import nn

import gmbound


@pytest.fixture
def tiny():
    # z = W1 x + b1 with W1 = [[1, 1], [1, -1]], b1 = [1, 0]; out = relu(z1) + relu(z2)
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 1.0], [1.0, -1.0]]))
        net[0].bias.copy_(torch.tensor([1.0, 0.0]))
        net[2].weight.copy_(torch.tensor([[1.0, 1.0]]))
        net[2].bias.zero_()
    return gmbound.BoundedSequential(net)


X0 = torch.zeros(1, 2, dtype=torch.float64)


def test_unclipped_radius_one(tiny):
    # Box [-1, 1]^2: z1 in [-1, 3], z2 in [-2, 2]; IBP: relu -> [0, 3] + [0, 2] = [0, 5].
    ibp = tiny.bounds(X0, 1.0, method="ibp")
    assert ibp.lower.shape == (1, 1, 1)
    torch.testing.assert_close(ibp.lower.flatten(), torch.tensor([0.0], dtype=torch.float64))
    torch.testing.assert_close(ibp.upper.flatten(), torch.tensor([5.0], dtype=torch.float64))
    # CROWN: z1 unstable, chord slope 3/4, intercept 3/4, lower slope 1 (3 > 1);
    # z2 unstable, chord slope 1/2, intercept 1, lower slope 0 (2 > 2 is false).
    # lower: z1 = x1 + x2 + 1 >= -1;  upper: 3/4 z1 + 3/4 + 1/2 z2 + 1 = 5/4 x1 + 1/4 x2 + 5/2 <= 4.
    for method in ("crown-ibp", "crown"):
        b = tiny.bounds(X0, 1.0, method=method)
        torch.testing.assert_close(b.lower.flatten(), torch.tensor([-1.0], dtype=torch.float64))
        torch.testing.assert_close(b.upper.flatten(), torch.tensor([4.0], dtype=torch.float64))
    # beta mixes: 0.5 * CROWN-IBP + 0.5 * IBP
    mixed = tiny.bounds(X0, 1.0, method="crown-ibp", beta=0.5)
    torch.testing.assert_close(mixed.lower.flatten(), torch.tensor([-0.5], dtype=torch.float64))
    torch.testing.assert_close(mixed.upper.flatten(), torch.tensor([4.5], dtype=torch.float64))


def test_two_radii_with_clipping(tiny):
    # x_min = -0.5. r = 0.5: box [-0.5, 0.5]^2, z1 in [0, 2] (active), z2 in [-1, 1] (slope 1/2,
    # intercept 1/2, lower slope 0): IBP [0, 3]; CROWN lower min(z1) = 0, upper
    # z1 + z2/2 + 1/2 = 3/2 x1 + 1/2 x2 + 3/2 <= 5/2.
    # r = 1: box [-0.5, 1]^2, z1 in [0, 3] (active), z2 in [-1.5, 1.5] (slope 1/2, intercept 3/4):
    # IBP [0, 4.5]; CROWN lower 0, upper 3/2 x1 + 1/2 x2 + 7/4 <= 3.75.
    eps = torch.tensor([0.5, 1.0], dtype=torch.float64)
    ibp = tiny.bounds(X0, eps, method="ibp", x_min=-0.5, x_max=2.0)
    torch.testing.assert_close(ibp.lower.flatten(), torch.tensor([0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(ibp.upper.flatten(), torch.tensor([3.0, 4.5], dtype=torch.float64))
    crown = tiny.bounds(X0, eps, method="crown-ibp", x_min=-0.5, x_max=2.0)
    torch.testing.assert_close(crown.lower.flatten(), torch.tensor([0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(crown.upper.flatten(), torch.tensor([2.5, 3.75], dtype=torch.float64))


def test_specification_is_folded_into_the_last_layer():
    # out = [z, z] with z = relu(x) - relu(-x) = x exactly; C = [1, -1] gives out1 - out2 = 0.
    # Folding C into the last layer makes IBP exact (0, 0); intervals of the logits would give [-2r, 2r].
    net = nn.Sequential(nn.Linear(1, 2), nn.ReLU(), nn.Linear(2, 2)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        net[0].bias.zero_()
        net[2].weight.copy_(torch.tensor([[1.0, -1.0], [1.0, -1.0]]))
        net[2].bias.zero_()
    C = torch.tensor([[[1.0, -1.0]]], dtype=torch.float64)
    b = gmbound.BoundedSequential(net).bounds(torch.zeros(1, 1, dtype=torch.float64), 1.0, C, method="ibp")
    torch.testing.assert_close(b.lower.flatten(), torch.tensor([0.0], dtype=torch.float64))
    torch.testing.assert_close(b.upper.flatten(), torch.tensor([0.0], dtype=torch.float64))
    logits = gmbound.BoundedSequential(net).bounds(torch.zeros(1, 1, dtype=torch.float64), 1.0, method="ibp")
    torch.testing.assert_close(logits.lower.flatten(), torch.tensor([-1.0, -1.0], dtype=torch.float64))

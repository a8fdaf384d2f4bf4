"""Bad input gets an error that names the problem, never a silent wrong bound."""
import pytest
import torch
from torch import nn

import gmbound
from nets import make_case


@pytest.fixture
def case():
    net, x, y = make_case("cnn", 0)
    return gmbound.BoundedSequential(net), x, y


@pytest.mark.parametrize("eps, match", [
    (-0.1, "non-negative"),
    (float("nan"), "finite"),
    (float("inf"), "finite"),
    ([0.1, -0.2], "non-negative"),
    (torch.tensor([0.1, float("nan")], dtype=torch.float64), "finite"),
    (torch.zeros(2, 5, dtype=torch.float64), r"\[N, B=3\]"),
    (torch.zeros(2, 3, 1, dtype=torch.float64), "vector"),
    ([], "empty"),
])
def test_bad_eps(case, eps, match):
    bnet, x, _ = case
    with pytest.raises(gmbound.BoundInputError, match=match):
        bnet.bounds(x, eps)


def test_bad_specification(case):
    bnet, x, y = case
    with pytest.raises(gmbound.BoundInputError, match=r"C must have shape \[B=3, K, 5\]"):
        bnet.bounds(x, 0.1, torch.zeros(3, 2, 4, dtype=torch.float64))
    with pytest.raises(gmbound.BoundInputError, match=r"C must have shape"):
        bnet.bounds(x, 0.1, torch.zeros(2, 2, 5, dtype=torch.float64))
    with pytest.raises(gmbound.BoundInputError, match="dtype mismatch: C"):
        bnet.bounds(x, 0.1, torch.zeros(3, 2, 5, dtype=torch.float32))


def test_unsupported_layers_are_named_with_their_index():
    with pytest.raises(gmbound.UnsupportedLayerError, match=r"SELU at index 2"):
        gmbound.BoundedSequential(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.SELU(), nn.Linear(2, 1)))
    with pytest.raises(gmbound.UnsupportedLayerError, match=r"MaxPool2d at index 2.*ceil_mode"):  # flattened index
        gmbound.BoundedSequential(nn.Sequential(nn.Sequential(nn.Conv2d(1, 1, 3), nn.ReLU()),
                                                nn.MaxPool2d(2, ceil_mode=True)))
    with pytest.raises(gmbound.UnsupportedLayerError, match=r"'pool' \(call_module pool = MaxPool2d\)"):
        gmbound.BoundedSequential(_Pooled())  # a traced model names the node instead


class _Pooled(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.pool = nn.Conv2d(1, 1, 3), nn.MaxPool2d(2, ceil_mode=True)

    def forward(self, x):
        return self.pool(self.conv(x))


def test_a_single_layer_is_a_network_of_one():
    lin = nn.Linear(2, 2).double()
    b = gmbound.BoundedSequential(lin).bounds(torch.zeros(1, 2, dtype=torch.float64), 1.0, method="ibp")
    assert torch.equal(b.lower[0], -lin.weight.abs().sum(1, keepdim=True).T + lin.bias)


def test_train_mode_dropout_is_refused_at_call_time():
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Dropout(0.5), nn.Linear(3, 2)).eval()
    bnet = gmbound.BoundedSequential(net)
    bnet.bounds(torch.zeros(1, 2), 0.1)  # fine in eval mode
    net.train()
    with pytest.raises(gmbound.UnsupportedLayerError, match="Dropout at index 2"):
        bnet.bounds(torch.zeros(1, 2), 0.1)


def test_dtype_and_device_mismatch(case):
    bnet, x, y = case
    with pytest.raises(gmbound.BoundInputError, match="dtype mismatch: x is torch.float32"):
        bnet.bounds(x.float(), 0.1)
    with pytest.raises(gmbound.BoundInputError, match="dtype mismatch: eps"):
        bnet.bounds(x, torch.tensor([0.1], dtype=torch.float32))
    with pytest.raises(gmbound.BoundInputError, match="device mismatch: eps is on meta"):
        bnet.bounds(x, torch.tensor([0.1], dtype=torch.float64, device="meta"))
    with pytest.raises(gmbound.BoundInputError, match="device mismatch: x is on meta"):
        bnet.bounds(x.to("meta"), 0.1)


def test_wrong_input_shape_names_the_layer():
    bnet = gmbound.BoundedSequential(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))
    with pytest.raises(ValueError, match="Linear at index 1 expects 4 input features"):
        bnet.bounds(torch.zeros(2, 5), 0.1)


def test_x_outside_the_domain(case):
    bnet, x, _ = case
    with pytest.raises(gmbound.BoundInputError, match="below x_min"):
        bnet.bounds(x - 2, 0.1, x_min=0.0, x_max=1.0)
    with pytest.raises(gmbound.BoundInputError, match="above x_max"):
        bnet.bounds(x + 2, 0.1, x_min=0.0, x_max=1.0)
    with pytest.raises(gmbound.BoundInputError, match="does not broadcast"):
        bnet.bounds(x, 0.1, x_min=torch.zeros(5, dtype=torch.float64))


def test_bad_method_beta_and_labels(case):
    bnet, x, y = case
    with pytest.raises(gmbound.BoundInputError, match="method must be one of"):
        bnet.bounds(x, 0.1, method="deeppoly")
    with pytest.raises(gmbound.BoundInputError, match="beta"):
        bnet.bounds(x, 0.1, method="crown-ibp", beta=1.5)
    with pytest.raises(gmbound.BoundInputError, match=r"labels must lie in \[0, 5\)"):
        bnet.margin_bounds(x, torch.tensor([0, 1, 7]), 0.1)
    with pytest.raises(gmbound.BoundInputError, match=r"y must have shape \[B=3\]"):
        bnet.margin_bounds(x, torch.tensor([0, 1]), 0.1)
    with pytest.raises(gmbound.BoundInputError, match="x contains NaN"):
        bnet.bounds(torch.full_like(x, float("nan")), 0.1)

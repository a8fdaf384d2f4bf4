"""Plain nn.Module models through the torch.fx front end: residual sums, pooling, constants.

Soundness by sampling on random residual / pooling networks on every backend, hand-computed
cases for the sum and for pooling, gradcheck, bit-for-bit parity of the graph and Sequential
paths on Sequential models, and errors that name the node, its op and its source line.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gmbound
from gmbound import _extension
from graph_nets import GRAPH_NETS, PoolNet, TinyResNet, make_graph_case
from nets import NETS, make_case, sample_box
from backends import BACKENDS

METHODS = ["ibp", "crown-ibp", "crown"]
RADII = [0.0, 0.02, 0.1]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", sorted(GRAPH_NETS))
def test_sound_by_sampling(name, method, backend):
    for seed in (0, 1):
        net, x, _ = make_graph_case(name, seed)
        b = gmbound.BoundedSequential(net).bounds(x, RADII, method=method, x_min=0, x_max=1, backend=backend)
        with torch.no_grad():
            f = net(x)
            assert torch.allclose(b.lower[0], f, atol=1e-12) and torch.allclose(b.upper[0], f, atol=1e-12)
            for i, r in enumerate(RADII[1:], start=1):
                pts = sample_box(x, r, 64, 0.0, 1.0, seed=seed + 10 * i)
                out = net(pts.flatten(0, 1)).view(pts.shape[0], x.shape[0], -1)
                assert (out >= b.lower[i] - 1e-12).all() and (out <= b.upper[i] + 1e-12).all(), (name, method, r)
            w1, w2 = b.upper[1] - b.lower[1], b.upper[2] - b.lower[2]
            assert (w2 >= w1).all() and (w2 > 1e-3).any()  # real boxes, not points


@pytest.mark.parametrize("name", sorted(GRAPH_NETS))
def test_tighter_methods_and_backends_agree(name):
    net, x, y = make_graph_case(name, 3)
    bnet = gmbound.BoundedSequential(net)
    m = {meth: bnet.margin_bounds(x, y, RADII, method=meth, x_min=0, x_max=1, backend="reference")
         for meth in METHODS}
    assert (m["crown"] >= m["crown-ibp"] - 1e-12).all()
    if _extension.available():
        for meth in METHODS:
            got = bnet.margin_bounds(x, y, RADII, method=meth, x_min=0, x_max=1, backend="cpu")
            torch.testing.assert_close(got, m[meth], rtol=1e-10, atol=1e-10)


def test_radii_are_one_batched_call():
    net, x, y = make_graph_case("resnet", 4)
    bnet = gmbound.BoundedSequential(net)
    together = bnet.margin_bounds(x, y, RADII, x_min=0, x_max=1)
    apart = torch.cat([bnet.margin_bounds(x, y, [r], x_min=0, x_max=1) for r in RADII])
    torch.testing.assert_close(together, apart, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- hand-computed cases
class LinearPlusInput(nn.Module):
    """``W x + x`` with ``W = [[1, 1], [1, -1]]``: ``x`` feeds the Linear layer and the sum."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2, bias=False)
        self.lin.weight.data = torch.tensor([[1.0, 1.0], [1.0, -1.0]])

    def forward(self, x):
        return self.lin(x) + x


class ReluPlusInput(nn.Module):
    def forward(self, x):
        return F.relu(x) + x


def test_sum_by_hand():
    net = LinearPlusInput().double()
    x = torch.zeros(1, 2, dtype=torch.float64)
    b = gmbound.BoundedSequential(net)
    # IBP: [-2, 2] + [-1, 1] in each output
    ibp = b.bounds(x, 1.0, method="ibp")
    assert torch.equal(ibp.lower[0], torch.tensor([[-3.0, -3.0]], dtype=torch.float64))
    # CROWN sums the Lambdas reaching x through the Linear layer and through the sum: (W + I) x =
    # [[2, 1], [1, 0]] x, exactly [-3, 3] and [-1, 1] on the box (a Lambda overwritten, not summed, gives other numbers)
    crown = b.bounds(x, 1.0, method="crown-ibp")
    assert torch.equal(crown.lower[0], torch.tensor([[-3.0, -1.0]], dtype=torch.float64))
    assert torch.equal(crown.upper[0], torch.tensor([[3.0, 1.0]], dtype=torch.float64))


def test_residual_relu_by_hand():
    # relu(x) + x on x in [-1, 2]: the true range is [-1, 4] (x on [-1, 0], 2x on [0, 2]).
    x = torch.tensor([[0.5]], dtype=torch.float64)
    b = gmbound.BoundedSequential(ReluPlusInput())
    ibp = b.bounds(x, 1.5, method="ibp")
    assert ibp.lower.item() == -1.0 and ibp.upper.item() == 4.0  # [0, 2] + [-1, 2]
    # CROWN: u = 2 > -l = 1, so the lower line is relu(x) >= x: 2x >= -2; the upper line is the
    # chord (2/3) x + 2/3: (5/3) x + 2/3 <= 4.
    crown = b.bounds(x, 1.5, method="crown-ibp")
    torch.testing.assert_close(crown.lower, torch.tensor([[[-2.0]]], dtype=torch.float64), rtol=0, atol=1e-15)
    torch.testing.assert_close(crown.upper, torch.tensor([[[4.0]]], dtype=torch.float64), rtol=0, atol=1e-15)


class PoolOfRelu(nn.Module):
    def __init__(self, padded: bool):
        super().__init__()
        self.padded = padded

    def forward(self, x):
        if self.padded:  # count_include_pad: each output is the one input / 4
            return torch.flatten(F.avg_pool2d(x, 2, stride=1, padding=1), 1)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(F.relu(x), (1, 1)), 1)


def test_pooling_by_hand():
    x = torch.ones(1, 1, 2, 2, dtype=torch.float64)  # box [-1, 3]^4
    b = gmbound.BoundedSequential(PoolOfRelu(padded=False))
    ibp = b.bounds(x, 2.0, method="ibp")
    assert ibp.lower.item() == 0.0 and ibp.upper.item() == 3.0  # the mean of [0, 3]^4
    # CROWN: u = 3 > -l = 1: lower line relu(x) >= x, mean >= -1; upper chord 3/4 x + 3/4, mean <= 3
    crown = b.bounds(x, 2.0, method="crown-ibp")
    assert crown.lower.item() == -1.0 and crown.upper.item() == 3.0
    one = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    padded = gmbound.BoundedSequential(PoolOfRelu(padded=True))
    for method in METHODS:
        bb = padded.bounds(one, 2.0, method=method)  # x in [-1, 3], each output x / 4
        assert torch.equal(bb.lower, torch.full((1, 1, 4), -0.25, dtype=torch.float64))
        assert torch.equal(bb.upper, torch.full((1, 1, 4), 0.75, dtype=torch.float64))


class OptionAShortcut(nn.Module):
    """A CIFAR ResNet's parameter-free shortcut: subsample by 2, zero-pad two new channels."""

    def forward(self, x):
        return torch.flatten(F.pad(F.relu(x)[:, :, ::2, ::2], (0, 0, 0, 0, 1, 1)), 1)


def test_strided_subsampling_and_zero_padding_by_hand():
    x = torch.arange(9, dtype=torch.float64).view(1, 1, 3, 3) - 4  # box [x - 1, x + 1]
    b = gmbound.BoundedSequential(OptionAShortcut())
    picked = (x[:, :, ::2, ::2] + torch.tensor([-1.0, 1.0], dtype=torch.float64).view(2, 1, 1, 1, 1)).clamp_min(0)
    zeros = torch.zeros(2, 1, 1, 2, 2, dtype=torch.float64)
    expect = torch.cat([zeros, picked, zeros], dim=2).flatten(2)  # [2 (lower, upper), 1, 12]
    for method in METHODS:  # the picked inputs -4, -2, 2, 4 (+- 1) are stable ReLUs: every method is exact
        bb = b.bounds(x, 1.0, method=method)
        assert torch.equal(bb.lower[0], expect[0]) and torch.equal(bb.upper[0], expect[1]), method


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck(backend):
    net, x, y = make_graph_case("resnet", 5, batch=2)
    bnet = gmbound.BoundedSequential(net)
    names = ["layer2.conv2.weight", "fc.weight", "layer1.bn1.weight"]

    def margins(*params):
        swapped = dict(zip(names, params))
        with torch.nn.utils.stateless._reparametrize_module(net, swapped):
            return bnet.margin_bounds(x, y, [0.01, 0.04], method="crown-ibp", beta=0.6, x_min=0, x_max=1,
                                      backend=backend)

    params = [dict(net.named_parameters())[n].detach().clone().requires_grad_() for n in names]
    assert torch.autograd.gradcheck(margins, params, eps=1e-6, atol=1e-6, fast_mode=True)


def test_gm_loss_trains_a_graph_model():
    net, x, y = make_graph_case("resnet", 6)
    out = gmbound.gm_loss(net, x, y, eps=0.05, n_radii=3, x_min=0, x_max=1)
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    assert net.layer1.conv2.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- parity with Sequentials
class Wrapped(nn.Module):
    """A Sequential called from a plain module: the tracer goes through it, giving the same chain."""

    def __init__(self, seq: nn.Sequential):
        super().__init__()
        self.seq = seq

    def forward(self, x):
        return self.seq(x)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(NETS))
def test_graph_path_is_bit_identical_to_the_sequential_path(name, backend):
    net, x, y = make_case(name, 7)
    seq, traced = gmbound.BoundedSequential(net), gmbound.BoundedSequential(Wrapped(net))
    assert len(traced._graph().nodes) == len(seq._graph().nodes)
    for method in METHODS:
        a = seq.bounds(x, RADII, method=method, x_min=0, x_max=1, backend=backend)
        b = traced.bounds(x, RADII, method=method, x_min=0, x_max=1, backend=backend)
        assert torch.equal(a.lower, b.lower) and torch.equal(a.upper, b.upper), method
    ga = torch.autograd.grad(gmbound.gm_loss(seq, x, y, 0.1, n_radii=3, x_min=0, x_max=1, backend=backend).loss,
                             list(net.parameters()))
    gb = torch.autograd.grad(gmbound.gm_loss(traced, x, y, 0.1, n_radii=3, x_min=0, x_max=1,
                                             backend=backend).loss, list(net.parameters()))
    assert all(torch.equal(u, v) for u, v in zip(ga, gb))


# ----------------------------------------------------------------------------- the model is read live
def test_parameters_and_modules_are_read_at_call_time():
    net, x, y = make_graph_case("pool", 8)
    bnet = gmbound.BoundedSequential(net)
    before = bnet.margin_bounds(x, y, [0.05], x_min=0, x_max=1)
    with torch.no_grad():
        net.fc2.weight.mul_(2)
        net.offset.add_(1.0)  # a buffer used as a constant
    after = bnet.margin_bounds(x, y, [0.05], x_min=0, x_max=1)
    assert not torch.allclose(before, after)
    assert torch.equal(after, gmbound.BoundedSequential(net).margin_bounds(x, y, [0.05], x_min=0, x_max=1))
    net.fc2 = nn.Linear(6, 7).double()  # a replaced layer (another output size) is seen
    assert gmbound.BoundedSequential(net).bounds(x, 0.05).lower.shape == (1, 3, 7)
    assert bnet.bounds(x, 0.05).lower.shape == (1, 3, 7)


def test_hooks_and_overriding_subclasses_in_a_traced_model():
    net, x, _ = make_graph_case("resnet", 9)
    bnet = gmbound.BoundedSequential(net)
    handle = net.layer1.register_forward_hook(lambda m, i, o: o + 1)
    with pytest.raises(gmbound.UnsupportedLayerError, match=r"module 'layer1' \(Block\) has a forward hook"):
        bnet.bounds(x, 0.01)
    handle.remove()

    class DoubledLinear(nn.Linear):  # its own forward: traced through, so what it computes is bounded
        def forward(self, a):
            return F.linear(a, 2 * self.weight, self.bias)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = DoubledLinear(3, 2).double()

        def forward(self, a):
            return F.relu(self.fc(a))

    # (its arithmetic on the weight is a node gmbound does not bound, named with its line)
    with pytest.raises(gmbound.UnsupportedLayerError, match=r"node 'mul' .*test_graph.py:\d+: return F.linear"):
        gmbound.BoundedSequential(Net())


def test_train_mode_dropout_in_a_graph_is_refused_at_call_time():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.drop = nn.Linear(3, 2), nn.Dropout(0.5)

        def forward(self, x):
            return self.drop(self.fc(x))

    net = Net().eval()
    bnet = gmbound.BoundedSequential(net)
    bnet.bounds(torch.zeros(1, 3), 0.1)
    net.train()
    with pytest.raises(gmbound.UnsupportedLayerError, match="'drop'.*training mode"):
        bnet.bounds(torch.zeros(1, 3), 0.1)


# ----------------------------------------------------------------------------- unsupported nodes
class SoftMaxed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x):
        return F.softmax(self.conv(x), 1)


class Concatenated(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 2)
        self.register_buffer("c", torch.ones(1, 2))

    def forward(self, x):
        return torch.cat([self.a(x), self.c], dim=1)


class Quotient(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 2), nn.Linear(3, 2)

    def forward(self, x):
        return self.a(x) / self.b(x)


class Branching(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 2)

    def forward(self, x):
        if x.sum() > 0:
            return self.a(x)
        return -self.a(x)


@pytest.mark.parametrize("model, pattern", [
    (SoftMaxed(), r"node 'softmax' \(call_function torch.nn.functional.softmax\) at test_graph.py:\d+: "
                  r"return F.softmax\(self.conv\(x\), 1\)"),
    (Concatenated(), r"node 'cat' \(call_function torch.cat\) at test_graph.py:\d+: return torch.cat.*constant"),
    (Quotient(), r"node 'truediv' \(call_function operator.truediv\) at test_graph.py:\d+: "
                 r"return self.a\(x\) / self.b\(x\).*division of two tensors"),
    (Branching(), r"cannot trace Branching.forward at test_graph.py:\d+: if x.sum\(\) > 0:.*control flow"),
    (nn.Sequential(nn.Linear(3, 3), nn.SELU()), r"SELU at index 1"),
])
def test_unsupported_nodes_are_named_with_op_and_line(model, pattern):
    with pytest.raises(gmbound.UnsupportedLayerError, match=pattern):
        gmbound.BoundedSequential(model)


def test_adaptive_pooling_with_uneven_windows_is_bounded():
    """5x5 -> 2x2 has windows of 3x3 overlapping on the middle row and column: the adjoint path, exact at radius 0."""
    class Uneven(nn.Module):
        def forward(self, x):
            return torch.flatten(F.adaptive_avg_pool2d(x, 2), 1)

    bnet = gmbound.BoundedSequential(Uneven())
    x = torch.rand(2, 1, 5, 5, dtype=torch.float64)
    b = bnet.bounds(x, [0.0, 0.1], method="crown")
    torch.testing.assert_close(b.lower[0], Uneven()(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(b.upper[0], Uneven()(x), rtol=0, atol=1e-12)
    # a linear map with weights summing to 1: the box of radius r maps to exactly +-r, clipping aside
    torch.testing.assert_close(b.upper[1] - b.lower[1], torch.full_like(b.lower[1], 0.2), rtol=0, atol=1e-12)


def test_relu_neurons_counts_functional_relus():
    from gmbound.evaluate import relu_neurons

    # stem 3x6x6, block 1: two ReLUs of 3x6x6, block 2 (stride 2): two of 4x3x3
    assert relu_neurons(TinyResNet().double(), (2, 6, 6)) == 3 * 108 + 2 * 36


def test_the_zoo_resnet_shapes_follow_the_input():
    net = TinyResNet().double().eval()
    bnet = gmbound.BoundedSequential(net)
    for size in (6, 8):
        x = torch.rand(2, 2, size, size, dtype=torch.float64)
        assert bnet.bounds(x, 0.01, method="crown-ibp").lower.shape == (1, 2, 5)
    assert isinstance(PoolNet(), nn.Module)

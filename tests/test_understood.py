"""Only bound what we understand; cached shapes follow the model (issue 9, items 2 and 3).

Each refused case first shows, by sampling, that bounding the layer as its base type (what
gmbound did before) misses real outputs; then that gmbound now refuses it, naming the layer.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as torch_module
from torch.nn.utils import parametrize, prune

import gmbound
from nets import sample_box

EPS = 0.1


class ShiftedReLU(nn.ReLU):
    def forward(self, x):
        return F.relu(x) + 1.0


class DoubledLinear(nn.Linear):
    def forward(self, x):
        return F.linear(x, 2 * self.weight, self.bias)


class DoubledConv(nn.Conv2d):
    def _conv_forward(self, x, weight, bias):
        return super()._conv_forward(x, 2 * weight, bias)


class ResidualSequential(nn.Sequential):
    def forward(self, x):
        return super().forward(x) + x


class NamedLinear(nn.Linear):
    """Adds an attribute, keeps nn.Linear's forward: accepted."""

    tag = "head"


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)).double()


def _shift_output(_module, _inp, out):
    return out + 1.0


def _scale_input(_module, inp):
    return (3 * inp[0],)


def _x(shape=(6,), batch=3):
    return torch.rand((batch,) + shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)


def _misses(odd: nn.Module, plain: nn.Module, x: torch.Tensor, hook_register=None) -> float:
    """How far the odd model's outputs on the box fall outside the bounds of its base-layer twin.

    ``hook_register``: a global hook to hold while sampling (it would refuse the twin's bounds).
    """
    with torch.no_grad():
        b = gmbound.BoundedSequential(plain).bounds(x, EPS, method="crown-ibp", backend="reference")
        pts = sample_box(x, EPS, 64, float("-inf"), float("inf"), seed=1)
        handle = hook_register() if hook_register is not None else None
        try:
            out = torch.stack([odd(p) for p in pts])              # [n, B, out]
        finally:
            if handle is not None:
                handle.remove()
    return float(torch.maximum(b.lower[0] - out, out - b.upper[0]).max())


def _twin(model: nn.Sequential) -> nn.Sequential:
    """The same weights in plain layers: what gmbound bounded before."""
    layers = []
    leaves = [m for m in model.modules() if not isinstance(m, nn.Sequential) and not list(m.children())]
    for m in leaves:
        if isinstance(m, nn.Linear):
            plain = nn.Linear(m.in_features, m.out_features).double()
            plain.weight.data.copy_(m.weight)
            plain.bias.data.copy_(m.bias)
        elif isinstance(m, nn.Conv2d):
            plain = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding).double()
            plain.weight.data.copy_(m.weight)
            plain.bias.data.copy_(m.bias)
        elif isinstance(m, nn.ReLU):
            plain = nn.ReLU()
        else:
            plain = type(m)()
        layers.append(plain)
    return nn.Sequential(*layers)


def _relu_subclass():
    net = _mlp()
    net[1] = ShiftedReLU()
    return net, _x(), r"ShiftedReLU at index 1 subclasses nn.ReLU but replaces forward"


def _linear_subclass():
    net = _mlp()
    odd = DoubledLinear(8, 4).double()
    odd.load_state_dict(net[2].state_dict())
    net[2] = odd
    return net, _x(), r"DoubledLinear at index 2 subclasses nn.Linear but replaces forward"


def _conv_subclass():
    torch.manual_seed(0)
    conv = DoubledConv(1, 2, 3).double()
    net = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(2 * 3 * 3, 3)).double()
    return net, _x((1, 5, 5)), r"DoubledConv at index 0 subclasses nn.Conv2d but replaces _conv_forward"


def _forward_hook():
    net = _mlp()
    net[2].register_forward_hook(_shift_output)
    return net, _x(), r"Linear at index 2 has a forward hook \(_shift_output\)"


def _forward_pre_hook():
    net = _mlp()
    net[0].register_forward_pre_hook(_scale_input)
    return net, _x(), r"Linear at index 0 has a forward pre-hook \(_scale_input\)"


def _container_hook():
    torch.manual_seed(0)
    inner = nn.Sequential(nn.Linear(8, 4))
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), inner).double()
    inner.register_forward_hook(_shift_output)
    return net, _x(), r"Sequential container '2' has a forward hook"


def test_a_sequential_subclass_with_its_own_forward_is_traced_not_chained():
    """Bounding it as the plain chain of its layers would be wrong; the graph front end bounds its forward."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), ResidualSequential(nn.Linear(6, 6))).double()
    x = _x()
    assert _misses(net, _twin(net), x) > 1e-3  # the chain of its layers misses its outputs
    b = gmbound.BoundedSequential(net).bounds(x, EPS, method="crown-ibp", backend="reference")
    with torch.no_grad():
        out = net(sample_box(x, EPS, 64, float("-inf"), float("inf"), seed=1).flatten(0, 1)).view(64, 3, 6)
    assert (out >= b.lower[0] - 1e-12).all() and (out <= b.upper[0] + 1e-12).all()
    with pytest.raises(gmbound.UnsupportedLayerError, match="ResidualSequential container .* its own forward"):
        gmbound.network.build_ops(net)  # the chain front end itself still refuses it


def _pruned():
    net = _mlp()
    prune.l1_unstructured(net[2], "weight", amount=0.5)
    with torch.no_grad():
        net[2].weight_orig.mul_(-3.0)  # an optimiser step: the pre-hook recomputes weight at the next forward
    return net, _x(), r"Linear at index 2 is pruned with torch.nn.utils.prune"


REFUSED = {"relu_subclass": _relu_subclass, "linear_subclass": _linear_subclass, "conv_subclass": _conv_subclass,
           "forward_hook": _forward_hook, "forward_pre_hook": _forward_pre_hook, "container_hook": _container_hook,
           "pruned": _pruned}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_layers_that_are_not_their_base_type_are_refused(case):
    net, x, match = REFUSED[case]()
    # bounded as the base layers (before: the stale weight for the pruned one), real outputs fall outside
    twin = _twin(net)
    assert _misses(net, twin, x) > 1e-3
    with pytest.raises(gmbound.UnsupportedLayerError, match=match):
        gmbound.BoundedSequential(net)


def test_a_hook_added_after_construction_is_refused_at_call_time():
    net = _mlp()
    bnet = gmbound.BoundedSequential(net)
    x = _x()
    bnet.bounds(x, EPS)
    handle = net[2].register_forward_hook(_shift_output)
    for call in (lambda: bnet.bounds(x, EPS, method="crown-ibp"),
                 lambda: bnet.margin_bounds(x, torch.zeros(3, dtype=torch.long), EPS),
                 lambda: gmbound.gm_loss(bnet, x, torch.zeros(3, dtype=torch.long), EPS, n_radii=2)):
        with pytest.raises(gmbound.UnsupportedLayerError, match="Linear at index 2 has a forward hook"):
            call()
    handle.remove()
    bnet.bounds(x, EPS)  # fine again


def test_a_hook_on_the_wrapper_is_refused():
    bnet = gmbound.BoundedSequential(_mlp())
    bnet.register_forward_hook(_shift_output)
    with pytest.raises(gmbound.UnsupportedLayerError, match="BoundedSequential has a forward hook"):
        bnet.bounds(_x(), EPS)


@pytest.mark.parametrize("register", [torch_module.register_module_forward_hook,
                                      torch_module.register_module_forward_pre_hook])
def test_global_forward_hooks_are_refused(register):
    net = _mlp()
    hook = _shift_output if register is torch_module.register_module_forward_hook else _scale_input
    assert _misses(net, _twin(net), _x(), lambda: register(hook)) > 1e-3
    handle = register(hook)
    try:
        with pytest.raises(gmbound.UnsupportedLayerError, match="a global forward"):
            gmbound.BoundedSequential(net)
    finally:
        handle.remove()
    gmbound.BoundedSequential(net).bounds(_x(), EPS)


def _assert_sound(net, x, bnet=None):
    bnet = bnet if bnet is not None else gmbound.BoundedSequential(net)
    pts = sample_box(x, EPS, 64, float("-inf"), float("inf"), seed=2)
    with torch.no_grad():
        out = torch.stack([net(p) for p in pts])
    for method in ("ibp", "crown-ibp", "crown"):
        b = bnet.bounds(x, EPS, method=method)
        assert bool((out >= b.lower[0] - 1e-9).all()) and bool((out <= b.upper[0] + 1e-9).all()), method


def test_subclasses_that_keep_the_base_forward_are_accepted_and_sound():
    net = _mlp()
    kept = NamedLinear(8, 4).double()
    kept.load_state_dict(net[2].state_dict())
    net[2] = kept
    net[0].register_full_backward_hook(lambda *a: None)  # backward hooks do not change outputs
    _assert_sound(net, _x())


def test_parametrized_and_permanently_pruned_weights_are_read_at_call_time():
    class Doubled(nn.Module):
        def forward(self, w):
            return 2 * w

    net = _mlp()
    parametrize.register_parametrization(net[0], "weight", Doubled())
    prune.l1_unstructured(net[2], "weight", amount=0.5)
    prune.remove(net[2], "weight")
    x = _x()
    _assert_sound(net, x)
    with torch.no_grad():  # an optimiser step on the underlying parameter is seen without rebuilding
        net[0].parametrizations.weight.original.mul_(-1.5)
    _assert_sound(net, x)


# ----------------------------------------------------------------------------- item 3: cached shapes
@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_replacing_a_layer_after_a_call_uses_the_new_shapes(backend):
    net = _mlp()
    bnet = gmbound.BoundedSequential(net)
    x = _x()
    assert bnet.bounds(x, EPS, method="crown-ibp", backend=backend).lower.shape == (1, 3, 4)
    torch.manual_seed(3)
    net[2] = nn.Linear(8, 3).double()  # a new head with 3 classes
    b = bnet.bounds(x, EPS, method="crown-ibp", backend=backend)
    assert b.lower.shape == (1, 3, 3)
    _assert_sound(net, x, bnet)
    y = torch.tensor([0, 1, 2])
    assert bnet.margin_bounds(x, y, EPS, backend=backend).shape == (1, 3, 2)


def test_changing_a_convolution_stride_after_a_call_uses_the_new_shapes():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, stride=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 5 * 5, 3)).double()
    bnet = gmbound.BoundedSequential(net)
    x = _x((1, 7, 7))
    bnet.bounds(x, EPS, method="crown-ibp")
    net[0].stride = (2, 2)                     # same weight shape, different output size
    net[3] = nn.Linear(2 * 3 * 3, 3).double()
    _assert_sound(net, x, bnet)


def test_compat_refuses_the_same_layers():
    from gmbound.compat import BoundedModule, BoundedTensor, PerturbationLpNorm

    net, x, match = _forward_hook()
    with pytest.raises(gmbound.UnsupportedLayerError, match=match):
        BoundedModule(net, x)
    net = _mlp()
    model = BoundedModule(net, x)
    xb = BoundedTensor(x, PerturbationLpNorm(EPS))
    model.compute_bounds(x=(xb,), method="IBP")
    handle = net[0].register_forward_pre_hook(_scale_input)
    with pytest.raises(gmbound.UnsupportedLayerError, match="Linear at index 0 has a forward pre-hook"):
        model.compute_bounds(x=(xb,), method="CROWN-IBP")
    handle.remove()
    model.register_forward_hook(lambda m, i, o: o + 1)
    with pytest.raises(gmbound.UnsupportedLayerError, match="BoundedModule has a forward hook"):
        model.compute_bounds(x=(xb,), method="IBP")

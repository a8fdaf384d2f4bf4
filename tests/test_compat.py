"""gmbound.compat (auto_LiRPA's interface) against gmbound's native API, and its errors."""
import copy
import io
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gmbound
from gmbound.compat import (BoundedModule, BoundedTensor, CrossEntropyWrapper, PerturbationLpNorm,
                            UnsupportedFeatureError, resolve_method)
from gmbound.compat._box import covering_radius
from nets import make_case

METHODS = {"IBP": "ibp", "CROWN-IBP": "crown-ibp", "CROWN": "crown"}
EPS = 0.15


def bounded(x, eps=EPS, x_L=None, x_U=None):
    return BoundedTensor(x, PerturbationLpNorm(norm=np.inf, eps=eps, x_L=x_L, x_U=x_U))


def clipped(x, eps=EPS, lo=0.0, hi=1.0):
    """The box CROWN-IBP-style trainers pass: [max(x - eps, lo), min(x + eps, hi)]."""
    return bounded(x, eps, torch.clamp(x - eps, min=lo), torch.clamp(x + eps, max=hi))


def same(a, b):
    """Equal up to rounding noise (the same box reaches the same engine; a wrong box is off by ~eps)."""
    tol = 1e-12 if a.dtype == torch.float64 else 1e-5
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def spec(net, x, y):
    with torch.no_grad():
        n_out = net(x).shape[1]
    return gmbound.margin_spec(y, n_out, dtype=x.dtype)


# ---------------------------------------------------------------------------------------- bounds
@pytest.mark.parametrize("name", ["mlp", "cnn", "cnn_bn"])
@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("box", ["eps", "clipped", "per_sample_eps"])
@pytest.mark.parametrize("with_spec", [True, False])
def test_compute_bounds_equals_native(name, method, box, with_spec):
    net, x, y = make_case(name, seed=3, batch=4)
    model = BoundedModule(net, torch.empty_like(x))
    native = gmbound.BoundedSequential(net)
    C = spec(net, x, y) if with_spec else None
    if box == "eps":
        bx, kw = bounded(x), dict(eps=EPS)
    elif box == "clipped":
        bx, kw = clipped(x), dict(eps=EPS, x_min=0.0, x_max=1.0)
    else:
        e = torch.linspace(0.05, 0.2, x.shape[0], dtype=x.dtype)
        bx = bounded(x, e.view((-1,) + (1,) * (x.dim() - 1)))
        kw = dict(eps=e.unsqueeze(0))
    lb, ub = model.compute_bounds(x=(bx,), C=C, method=method)
    ref = native.bounds(x, C=C, method=METHODS[method], **kw)
    assert lb.shape == ref.lower.shape[1:]  # no radius axis, as auto_LiRPA
    # the same box reaches the same engine
    same(lb, ref.lower[0])
    same(ub, ref.upper[0])


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("flags", [(True, False), (False, True)])
def test_bound_lower_and_upper_flags(method, flags):
    net, x, y = make_case("cnn", seed=4, batch=3)
    model = BoundedModule(net, x)
    ref = gmbound.BoundedSequential(net).bounds(x, EPS, spec(net, x, y), method=METHODS[method],
                                                x_min=0.0, x_max=1.0)
    lb, ub = model.compute_bounds(x=(clipped(x),), C=spec(net, x, y), method=method,
                                  bound_lower=flags[0], bound_upper=flags[1])
    if flags[0]:
        assert ub is None
        same(lb, ref.lower[0])
    else:
        assert lb is None
        torch.testing.assert_close(ub, ref.upper[0], rtol=1e-12, atol=1e-12)
    with pytest.raises(gmbound.BoundInputError, match="at least one"):
        model.compute_bounds(C=spec(net, x, y), method=method, bound_lower=False, bound_upper=False)


def test_explicit_box_is_exactly_x_L_x_U_and_eps_is_ignored():
    # auto_LiRPA: with x_L / x_U given the box is [x_L, x_U], whatever eps says; an asymmetric box here.
    net, x, y = make_case("cnn", seed=5, batch=3)
    g = torch.Generator().manual_seed(0)
    x_L = x - 0.3 * torch.rand(x.shape, generator=g, dtype=x.dtype)
    x_U = x + 0.05 * torch.rand(x.shape, generator=g, dtype=x.dtype)
    model, C = BoundedModule(net, x), spec(net, x, y)
    native = gmbound.BoundedSequential(net)
    for method in METHODS:
        a = model.compute_bounds(x=(bounded(x, 0.01, x_L, x_U),), C=C, method=method)
        b = model.compute_bounds(x=(bounded(x, 5.0, x_L, x_U),), C=C, method=method)
        ref = native.bounds(x, 10.0, C, method=METHODS[method], x_min=x_L, x_max=x_U)
        for got in (a, b):
            same(got[0], ref.lower[0])
            same(got[1], ref.upper[0])
        # and they hold on the box: sample it (vertices and interior)
        u = torch.rand((64,) + x.shape, generator=g, dtype=x.dtype)
        u[:32] = u[:32].round()
        pts = x_L + u * (x_U - x_L)
        with torch.no_grad():
            out = torch.einsum("bkn,sbn->sbk", C, net(pts.flatten(0, 1)).view(64, x.shape[0], -1))
        assert bool((out >= a[0] - 1e-9).all()) and bool((out <= a[1] + 1e-9).all())


def test_one_sided_box_uses_eps_on_the_other_side():
    net, x, y = make_case("mlp", seed=6, batch=3)
    model, C = BoundedModule(net, x), spec(net, x, y)
    x_L = x - 0.4  # looser than eps below; above, x + eps
    lb, ub = model.compute_bounds(x=(bounded(x, EPS, x_L=x_L),), C=C, method="CROWN-IBP")
    ref = gmbound.BoundedSequential(net).bounds(x, 1.0, C, method="crown-ibp", x_min=x_L, x_max=x + EPS)
    same(lb, ref.lower[0])
    same(ub, ref.upper[0])


def test_per_channel_eps_box():
    net, x, y = make_case("cnn_bn", seed=7, batch=3)  # two input channels
    e = torch.tensor([0.05, 0.2], dtype=x.dtype).view(1, 2, 1, 1)
    model, C = BoundedModule(net, x), spec(net, x, y)
    lb, ub = model.compute_bounds(x=(bounded(x, e),), C=C, method="CROWN-IBP")
    ref = gmbound.BoundedSequential(net).bounds(x, 1.0, C, method="crown-ibp", x_min=x - e, x_max=x + e)
    same(lb, ref.lower[0])
    same(ub, ref.upper[0])


def test_float32_normalised_trainer_box():
    # The trainer's box in normalised units, float32: the covering radius must survive rounding.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(49, 20), nn.ReLU(), nn.Linear(20, 10))
    mean, std = 0.1307, 0.3081
    lo, hi = (0 - mean) / std, (1 - mean) / std
    pixels = torch.rand(16, 1, 7, 7)
    pixels[:, :, :2] = 0.0  # background, clipped below
    pixels[:, :, -1] = 1.0  # saturated, clipped above
    data = (pixels - mean) / std
    eps_n = 0.1 / std
    x_L, x_U = torch.clamp(data - eps_n, min=lo), torch.clamp(data + eps_n, max=hi)
    assert bool((data < x_L).any())  # float32 data fall an ulp below the float64 limit: the trainer's box
    bx = bounded(data, eps_n, x_L, x_U)  # misses x there, and gmbound.compat widens it to contain x
    y = torch.randint(0, 10, (16,))
    C = gmbound.margin_spec(y, 10)
    model = BoundedModule(net, data)
    ref = gmbound.BoundedSequential(net)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a rounding-size gap passes silently
        for method in METHODS:
            lb, ub = model.compute_bounds(x=(bx,), C=C, method=method)
            r = ref.bounds(data, 2 * eps_n, C, method=METHODS[method], x_min=torch.minimum(x_L, data),
                           x_max=torch.maximum(x_U, data))
            same(lb, r.lower[0])
            same(ub, r.upper[0])


def test_input_sticking_out_of_its_box_by_rounding_is_absorbed():
    # data_max computed in float64 is below a float32 saturated pixel: x > x_U by an ulp, the box
    # even empty at eps = 0. The box is widened to contain x (sound), silently at rounding scale.
    net, x, y = make_case("mlp", seed=8, batch=2)
    x_U = torch.nextafter(x, torch.full_like(x, -math.inf))   # one ulp below x
    model, C = BoundedModule(net, x), spec(net, x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lb, ub = model.compute_bounds(x=(bounded(x, 0.0, x_L=x, x_U=x_U),), C=C, method="IBP")
    ref = gmbound.BoundedSequential(net).bounds(x, 0.0, C, method="ibp")
    torch.testing.assert_close(lb, ref.lower[0])
    with pytest.warns(UserWarning, match="outside its box"):
        model.compute_bounds(x=(bounded(x, 0.0, x_L=x + 0.1, x_U=x + 0.2),), C=C, method="IBP")


def test_covering_radius_is_smallest_and_covers():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(50, 30, generator=g) * 3 - 1
    lo = x - torch.rand(50, 30, generator=g) * 0.3
    hi = x + torch.rand(50, 30, generator=g) * 0.3
    r = covering_radius(x, lo, hi)
    assert bool(((x - r[:, None]) <= lo).all()) and bool(((x + r[:, None]) >= hi).all())
    reach = torch.maximum(hi - x, x - lo).amax(1)
    assert bool((r >= reach).all()) and bool((r <= reach * (1 + 1e-6)).all())
    s = covering_radius(x, lo, hi, per_sample=False)
    assert s.dim() == 0 and float(s) == float(r.max())


# ------------------------------------------------------------------------------ auto_LiRPA forms
def test_auto_lirpa_call_forms():
    net, x, y = make_case("cnn", seed=9, batch=3)
    model, C = BoundedModule(net, (x,)), spec(net, x, y)
    native = gmbound.BoundedSequential(net)
    ref = {m: native.bounds(x, EPS, C, method=m, x_min=0.0, x_max=1.0) for m in METHODS.values()}
    bx = clipped(x)
    out = model(bx)  # forward sets the input later calls reuse
    torch.testing.assert_close(out, net(x))
    forms = [
        (dict(method_opt="compute_bounds", x=(bx,), IBP=True, C=C, method=None), "ibp"),
        (dict(method_opt="compute_bounds", IBP=True, C=C, method="backward"), "crown-ibp"),
        # auto_LiRPA keeps the IBP intermediate bounds of this input: "backward" reuses them (CROWN-IBP)
        (dict(method_opt="compute_bounds", IBP=False, C=C, method="backward"), "crown-ibp"),
        # a fresh input has none: full CROWN
        (dict(method_opt="compute_bounds", x=(bx,), IBP=False, C=C, method="backward"), "crown"),
    ]
    for kwargs, m in forms:
        lb, ub = model(**kwargs)
        same(lb, ref[m].lower[0])
        same(ub, ref[m].upper[0])
    for method, m in [("ibp", "ibp"), ("crown-ibp", "crown-ibp"), ("IBP+backward", "crown-ibp"),
                      ("crown", "crown"), ("CROWN", "crown-ibp")]:
        lb, _ = model.compute_bounds(x=bx, C=C, method=method, IBP=(method == "CROWN"))
        same(lb, ref[m].lower[0])
    lb, _ = model.compute_bounds(x=(bx,), C=C, reference_bounds=None, interm_bounds={}, reuse_alpha=False)
    same(lb, ref["crown"].lower[0])  # auto_LiRPA's default on a fresh input: method="backward", IBP=False: CROWN
    first = model.compute_bounds(x=(bx,), C=C, method=None, IBP=True)
    again = model.compute_bounds(C=C, method=None, IBP=True, reuse_ibp=True)
    assert again is first


def test_beta_mixing_with_two_calls_equals_native_beta():
    net, x, y = make_case("cnn", seed=10, batch=4)
    model, C = BoundedModule(net, x), spec(net, x, y)
    beta = 0.3
    ilb, _ = model.compute_bounds(x=(clipped(x),), C=C, method="IBP")
    clb, _ = model.compute_bounds(C=C, method="CROWN-IBP", bound_upper=False)
    ref = gmbound.BoundedSequential(net).bounds(x, EPS, C, method="crown-ibp", beta=beta, x_min=0.0, x_max=1.0)
    torch.testing.assert_close(beta * clb + (1 - beta) * ilb, ref.lower[0])


def test_plain_tensor_input_is_the_point_box():
    net, x, y = make_case("mlp", seed=11, batch=3)
    model = BoundedModule(net, x)
    lb, ub = model.compute_bounds(x=(x,), method="IBP")
    torch.testing.assert_close(lb, net(x).detach())
    torch.testing.assert_close(ub, net(x).detach())


def test_resolve_method_table():
    assert resolve_method("IBP") == "ibp"
    assert resolve_method(None, IBP=True) == "ibp"
    assert resolve_method("CROWN-IBP") == "crown-ibp"
    assert resolve_method("backward", IBP=True) == "crown-ibp"
    assert resolve_method("backward") == "crown"
    assert resolve_method("CROWN") == "crown"


# ------------------------------------------------------------------------------ module behaviour
def test_parameters_state_dict_and_modes_are_the_models():
    net, x, y = make_case("cnn_bn", seed=12, batch=4)
    model = BoundedModule(net, x)
    assert list(model.state_dict()) == list(net.state_dict()) and model.device == torch.device("cpu")
    assert {id(p) for p in model.parameters()} == {id(p) for p in net.parameters()}
    net2 = copy.deepcopy(net)
    for p in net2.parameters():
        p.data.add_(1.0)
    model.load_state_dict(net2.state_dict())
    torch.testing.assert_close(next(net.parameters()), next(net2.parameters()))
    model.train()
    assert all(m.training for m in net.modules())
    model.eval()
    assert not any(m.training for m in net.modules())


def test_train_mode_batchnorm_uses_batch_statistics_and_bounds_leave_running_ones():
    net, x, y = make_case("cnn_bn", seed=13, batch=6)
    model, C = BoundedModule(net, x), spec(net, x, y)
    model.train()
    native = gmbound.BoundedSequential(copy.deepcopy(net).train())
    bx = clipped(x)
    model(bx)  # updates the running statistics once, like any forward in training mode
    stats = [m.running_mean.clone() for m in net if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    lb, _ = model.compute_bounds(C=C, method="CROWN-IBP")
    after = [m.running_mean for m in net if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert all(torch.equal(a, b) for a, b in zip(stats, after))
    ref = native.bounds(x, EPS, C, method="crown-ibp", x_min=0.0, x_max=1.0)
    torch.testing.assert_close(lb, ref.lower[0])


def test_gradients_reach_the_parameters():
    net, x, y = make_case("cnn", seed=14, batch=4)
    model, C = BoundedModule(net, x), spec(net, x, y)
    lb, _ = model.compute_bounds(x=(clipped(x),), C=C, method="CROWN-IBP", bound_upper=False)
    loss = F.cross_entropy(torch.cat([torch.zeros_like(lb[:, :1]), -lb], 1), torch.zeros(4, dtype=torch.long))
    loss.backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())


def test_bounded_tensor_behaves_as_a_tensor():
    x = torch.rand(3, 4, dtype=torch.float64, requires_grad=True)
    ptb = PerturbationLpNorm(eps=0.1, x_L=torch.zeros(3, 4, dtype=torch.float64))
    bx = BoundedTensor(x * 2, ptb)
    assert isinstance(bx, torch.Tensor) and bx.ptb is ptb and bx.shape == (3, 4)
    assert type(bx + 1) is torch.Tensor and type(torch.cat([bx, bx])) is torch.Tensor
    moved = bx.to(torch.float32)
    assert isinstance(moved, BoundedTensor) and moved.dtype == torch.float32
    assert moved.ptb.x_L.dtype == torch.float32 and moved.ptb.eps == 0.1
    bx.sum().backward()  # autograd history kept
    torch.testing.assert_close(x.grad, torch.full_like(x, 2.0))
    buf = io.BytesIO()
    torch.save(BoundedTensor(x.detach(), ptb), buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert isinstance(loaded, BoundedTensor) and torch.equal(loaded.ptb.x_L, ptb.x_L)
    assert isinstance(copy.deepcopy(BoundedTensor(x.detach(), ptb)), BoundedTensor)


def test_wrapping_a_bounded_module_or_sequential():
    net, x, _ = make_case("mlp", seed=15, batch=2)
    for inner in (BoundedModule(net, x), gmbound.BoundedSequential(net)):
        assert BoundedModule(inner, x).original_model is net


# -------------------------------------------------------------------------------- GM extensions
def test_gm_loss_equals_native_gm_loss():
    net, x, y = make_case("cnn", seed=16, batch=5)
    model = BoundedModule(net, x)
    for method, beta in [("CROWN-IBP", 1.0), ("CROWN-IBP", 0.4), ("IBP", 1.0)]:
        got = model.gm_loss(clipped(x), y, n_radii=4, weights="inverse", kappa=0.3, beta=beta, method=method)
        ref = gmbound.gm_loss(net, x, y, EPS, n_radii=4, weights="inverse", kappa=0.3, beta=beta,
                              method=METHODS[method], x_min=0.0, x_max=1.0)
        torch.testing.assert_close(got.radii, ref.radii)
        torch.testing.assert_close(got.loss, ref.loss)
        torch.testing.assert_close(got.verified_error, ref.verified_error)
    # an unclipped box: the native call itself, exactly
    got = model.gm_loss(bounded(x), y, n_radii=3, kappa=0.0)
    ref = gmbound.gm_loss(net, x, y, EPS, n_radii=3, kappa=0.0)
    same(got.loss, ref.loss)


def test_gm_loss_with_one_radius_is_the_usual_robust_loss():
    net, x, y = make_case("cnn", seed=17, batch=5)
    model, C = BoundedModule(net, x), spec(net, x, y)
    bx = clipped(x)
    gm = model.gm_loss(bx, y, n_radii=1, kappa=0.0)
    lb, _ = model.compute_bounds(x=(bx,), C=C, method="CROWN-IBP", bound_upper=False)
    robust = F.cross_entropy(gmbound.robust_logits(lb, y, 5), y)
    torch.testing.assert_close(gm.loss, robust)
    gm.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_gm_bounds_nest_inside_the_box():
    net, x, y = make_case("cnn", seed=18, batch=4)
    model, C = BoundedModule(net, x), spec(net, x, y)
    bx = clipped(x)
    lb, ub = model.gm_bounds(x=(bx,), n_radii=3, C=C, method="CROWN-IBP")
    assert lb.shape == (3, 4, 4) and ub.shape == (3, 4, 4)
    full_lb, full_ub = model.compute_bounds(C=C, method="CROWN-IBP")
    torch.testing.assert_close(lb[-1], full_lb)
    torch.testing.assert_close(ub[-1], full_ub)
    radii = torch.tensor([0.05, 0.1, 0.3], dtype=x.dtype)  # 0.3 > EPS: clipped to the box
    lb2, _ = model.gm_bounds(radii=radii, C=C, method="IBP", bound_upper=False)
    ref = gmbound.BoundedSequential(net).bounds(x, radii, C, method="ibp", x_min=bx.ptb.x_L, x_max=bx.ptb.x_U)
    same(lb2, ref.lower)
    unclipped_lb, _ = model.gm_bounds(x=(bounded(x),), radii=radii, C=C, method="IBP")
    ref = gmbound.BoundedSequential(net).bounds(x, radii.clamp(max=EPS), C, method="ibp")
    same(unclipped_lb, ref.lower)


# ----------------------------------------------------------------------------------------- errors
class Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x)


class MaxPooled(nn.Module):
    def forward(self, x):
        return torch.nn.functional.max_pool2d(x, 2, ceil_mode=True).flatten(1)


def test_plain_modules_are_traced():
    """auto_LiRPA traces any forward(); so does gmbound.compat (torch.fx), for the supported nodes."""
    from graph_nets import make_graph_case

    net, x, y = make_graph_case("resnet", 0)
    model = BoundedModule(Custom().double(), torch.zeros(1, 4, dtype=torch.float64))
    assert model.compute_bounds(x=(torch.zeros(2, 4, dtype=torch.float64),), method="IBP")[0].shape == (2, 2)
    model = BoundedModule(net, x)
    lb, ub = model.compute_bounds(x=(BoundedTensor(x, PerturbationLpNorm(norm=np.inf, eps=0.03)),), method="CROWN-IBP")
    ref = gmbound.BoundedSequential(net).bounds(x, 0.03, method="crown-ibp")
    assert torch.equal(lb, ref.lower[0]) and torch.equal(ub, ref.upper[0])
    assert set(model.state_dict()) == set(net.state_dict())
    final = model[model.final_name]  # the node graph follows the traced graph: the last Linear reads the flatten
    assert final.ori_name == "fc" and model[final.input_name[0]].ori_name.startswith("node 'flatten'")
    from gmbound.compat.bound_ops import Bound

    adds = [n for n in model._modules.values() if isinstance(n, Bound) and "add" in n.ori_name]
    assert len(adds) == 2 and all(len(n.input_name) == 2 for n in adds)  # the two residual sums


def test_unsupported_models_are_refused_by_name():
    x = torch.zeros(1, 4)
    with pytest.raises(gmbound.UnsupportedLayerError, match=r"node 'max_pool2d' .*test_compat.py:\d+"):
        BoundedModule(MaxPooled(), torch.zeros(1, 1, 8, 8))
    with pytest.raises(gmbound.UnsupportedLayerError, match="SELU at index 1"):
        BoundedModule(nn.Sequential(nn.Linear(4, 3), nn.SELU(), nn.Linear(3, 2)), x)
    with pytest.raises(gmbound.UnsupportedLayerError, match="MaxPool2d at index 2"):
        BoundedModule(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True)),
                      torch.zeros(1, 1, 8, 8))
    with pytest.raises(UnsupportedFeatureError, match="custom_ops"):
        BoundedModule(nn.Sequential(nn.Linear(4, 2)), x, custom_ops={"op": object})
    with pytest.raises(gmbound.BoundInputError, match="global_input"):
        BoundedModule(nn.Sequential(nn.Linear(4, 2)), torch.zeros(1, 5))


@pytest.mark.parametrize("norm", [2, 1, 0, "2"])
def test_only_the_inf_norm(norm):
    with pytest.raises(UnsupportedFeatureError, match="norm=np.inf"):
        PerturbationLpNorm(norm=norm, eps=0.1)
    PerturbationLpNorm(norm=np.inf, eps=0.1)
    PerturbationLpNorm(norm=float("inf"), eps=0.1)


def test_unsupported_methods_options_and_arguments():
    net, x, y = make_case("mlp", seed=19, batch=2)
    model, bx = BoundedModule(net, x), clipped(x)
    with pytest.raises(gmbound.BoundInputError, match="unknown method 'deeppoly'"):
        model.compute_bounds(x=(bx,), method="deeppoly")
    for method in ("forward", "forward+backward", "alpha-CROWN", "CROWN-Optimized"):
        with pytest.raises(UnsupportedFeatureError, match="outside"):
            model.compute_bounds(x=(bx,), method=method)
    with pytest.raises(gmbound.BoundInputError, match="IBP=True"):
        model.compute_bounds(x=(bx,), method=None)
    for kwargs in (dict(final_node_name="/out"), dict(return_A=True), dict(aux=object()),
                   dict(interm_bounds={"a": 1}), dict(forward=True)):
        with pytest.raises(UnsupportedFeatureError):
            model.compute_bounds(x=(bx,), method="IBP", **kwargs)
    with pytest.raises(UnsupportedFeatureError, match="relu"):
        BoundedModule(net, x, bound_opts={"relu": "same-slope"})
    for value in ("same-slope", "zero-lb", "one-lb"):
        with pytest.raises(UnsupportedFeatureError, match="activation_bound_option.*adaptive"):
            BoundedModule(net, x, bound_opts={"activation_bound_option": value})
    BoundedModule(net, x, bound_opts={"activation_bound_option": None})       # auto_LiRPA's default: adaptive
    BoundedModule(net, x, bound_opts={"activation_bound_option": "adaptive"})
    BoundedModule(net, x, bound_opts={"loss_fusion": True})   # changes nothing without a CrossEntropyWrapper
    with pytest.raises(UnsupportedFeatureError, match="loss_fusion"):
        BoundedModule(CrossEntropyWrapper(net), (x, torch.zeros(1, dtype=torch.long)))
    BoundedModule(net, x, bound_opts={"relu": "adaptive", "conv_mode": "matrix", "sparse_intermediate_bounds": False})
    with pytest.warns(UserWarning, match="ignores bound_opts\\['some_option'\\]"):
        BoundedModule(net, x, bound_opts={"some_option": 1})
    with pytest.raises(UnsupportedFeatureError, match="single-input"):
        model(x, x)
    with pytest.raises(gmbound.BoundInputError, match="no input yet"):
        BoundedModule(net, x).compute_bounds(method="IBP")
    with pytest.raises(UnsupportedFeatureError, match="perturbation"):
        BoundedTensor(x, object())
    with pytest.raises(gmbound.BoundInputError, match="eps"):
        PerturbationLpNorm(eps=-1.0)
    with pytest.raises(gmbound.BoundInputError, match="exactly one"):
        model.gm_bounds(x=(bx,), n_radii=2, radii=[0.1])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_matches_cpu():
    net, x, y = make_case("cnn", seed=20, batch=4)
    C = spec(net, x, y)
    cpu = BoundedModule(copy.deepcopy(net), x).compute_bounds(x=(clipped(x),), C=C, method="CROWN-IBP")
    model = BoundedModule(net, x, device="cuda")
    bx = clipped(x).to("cuda")  # moves the perturbation's x_L / x_U along
    assert bx.ptb.x_L.is_cuda and model.device.type == "cuda"
    lb, ub = model.compute_bounds(x=(bx,), C=C.cuda(), method="CROWN-IBP")
    torch.testing.assert_close(lb.cpu(), cpu[0])
    torch.testing.assert_close(ub.cpu(), cpu[1])
    gm = model.gm_loss(bx, y.cuda(), n_radii=3)
    assert gm.loss.is_cuda and bool(torch.isfinite(gm.loss))


def test_a_module_listed_twice_is_two_nodes():
    """nn.Sequential(fc1, act, fc2, act, fc3) runs ``act`` twice: the node graph has a node for each run,
    linked in order, so the final node is the last Linear and the bounds are those of the whole chain."""
    from gmbound.compat import BoundedModule, BoundedTensor
    from gmbound.compat.perturbations import PerturbationLpNorm

    torch.manual_seed(0)
    act = nn.ReLU()
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 5), act, nn.Linear(5, 4), act, nn.Linear(4, 3)).double()
    x = torch.rand(2, 6, dtype=torch.float64)
    bm = BoundedModule(model, x)
    layers = [type(n).__name__ for n in bm.nodes()]
    assert len(layers) == 1 + 6, layers   # the input and one node per entry of the Sequential
    assert [i for i, n in enumerate(layers) if n == "BoundRelu"] == [3, 5]
    xb = BoundedTensor(x, PerturbationLpNorm(norm=float("inf"), eps=0.0))
    lb, ub = bm.compute_bounds(x=(xb,), method="IBP")
    torch.testing.assert_close(lb, model(x))
    torch.testing.assert_close(ub, model(x))

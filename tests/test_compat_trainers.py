"""gmbound.compat as auto_LiRPA's example trainers use it: reuse of IBP intermediate bounds, loss fusion,
BoundDataParallel, the graph's names, auto_LiRPA state_dicts, and the utils / eps_scheduler / perturbations
modules. Reference numbers come from gmbound's native API and from closed forms; auto_LiRPA itself is not
run here (the README's compat section reports the side-by-side runs of its scripts).
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gmbound
from gmbound.compat import (BoundDataParallel, BoundedModule, BoundedParameter, BoundedTensor, CrossEntropyWrapper,
                            PerturbationLpNorm, UnsupportedFeatureError)
from gmbound.compat.bound_ops import BoundExp, BoundLinear, BoundRelu
from gmbound.compat.eps_scheduler import (AdaptiveScheduler, FixedScheduler, LinearScheduler,
                                          SmoothedScheduler)
from gmbound.compat.utils import MultiAverageMeter, get_spec_matrix, logger, sync_params
from graph_nets import Dense, DenseSequential
from nets import make_case, sample_box

EPS = 0.15


def clipped(x, eps=EPS):
    return BoundedTensor(x, PerturbationLpNorm(norm=np.inf, eps=eps, x_L=(x - eps).clamp(min=0.0),
                                               x_U=(x + eps).clamp(max=1.0)))


def native(net, x, C, method):
    return gmbound.BoundedSequential(net).bounds(x, EPS, C, method=method, x_min=0.0, x_max=1.0)


def spec(net, x, y):
    with torch.no_grad():
        return gmbound.margin_spec(y, net(x).shape[1], dtype=x.dtype)


# ------------------------------------------------------------------- item 1: no silent change of method
@pytest.mark.parametrize("name", ["mlp", "cnn_bn"])
def test_backward_after_ibp_on_the_same_input_is_crown_ibp(name):
    """simple_training.py's pair of calls: IBP, then method="backward" with IBP=False and no new input."""
    net, x, y = make_case(name, seed=31, batch=4)
    model, C = BoundedModule(net, x), spec(net, x, y)
    ref = {m: native(net, x, C, m) for m in ("ibp", "crown-ibp", "crown")}
    assert not torch.allclose(ref["crown-ibp"].lower, ref["crown"].lower)  # the two methods differ here
    model(clipped(x))
    ilb, _ = model.compute_bounds(IBP=True, C=C, method=None)
    clb, cub = model.compute_bounds(IBP=False, C=C, method="backward", bound_upper=False)
    torch.testing.assert_close(ilb, ref["ibp"].lower[0])
    torch.testing.assert_close(clb, ref["crown-ibp"].lower[0])
    assert cub is None
    # a new input (forward pass or x=) drops the intermediate bounds: "backward" is full CROWN again
    model(clipped(x))
    torch.testing.assert_close(model.compute_bounds(C=C, method="backward")[0], ref["crown"].lower[0])
    model.compute_bounds(x=(clipped(x),), IBP=True, C=C, method=None)
    model.compute_bounds(x=(clipped(x),), C=C, method="backward")   # x= again: fresh input
    with pytest.raises(UnsupportedFeatureError, match="IBP after a CROWN call"):
        model.compute_bounds(IBP=True, C=C, method=None)


def test_reused_crown_ibp_gradients_are_those_of_crown_ibp():
    net, x, y = make_case("mlp", seed=32, batch=4)
    model, C = BoundedModule(net, x), spec(net, x, y)
    model(clipped(x))
    model.compute_bounds(IBP=True, C=C, method=None)
    lb, _ = model.compute_bounds(C=C, method="backward", bound_upper=False)
    got = torch.autograd.grad(lb.sum(), list(net.parameters()))
    want = torch.autograd.grad(native(net, x, C, "crown-ibp").lower.sum(), list(net.parameters()))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


# ----------------------------------------------------------------------------- item 2: loss fusion
def fused(net, x, y, **kw):
    model = BoundedModule(CrossEntropyWrapper(net), (x, y), bound_opts={"loss_fusion": True}, **kw)
    return model


@pytest.mark.parametrize("name", ["mlp", "cnn_bn"])
def test_fused_ibp_is_the_robust_cross_entropy_of_the_ibp_margins(name):
    """log(ub) + max_input is logsumexp of the IBP upper bounds of y_j - y_label: the usual robust CE."""
    net, x, y = make_case(name, seed=33, batch=5)
    model = BoundDataParallel(fused(net, x, y))
    out = model(clipped(x), y)
    with torch.no_grad():
        logits = net(x)
    m = (logits - logits.gather(1, y[:, None])).max(1, keepdim=True)[0]
    torch.testing.assert_close(torch.log(out) + m, F.cross_entropy(logits, y, reduction="none")[:, None])
    ilb, iub = model(method_opt="compute_bounds", x=(clipped(x), y), IBP=True, C=None, method=None, no_replicas=True)
    max_input = model(get_property=True, node_class=BoundExp, att_name="max_input")
    robust_ce = torch.log(iub) + max_input
    margins = native(net, x, spec(net, x, y), "ibp").lower[0]
    want = F.cross_entropy(-torch.cat([torch.zeros_like(margins[:, :1]), margins], 1),
                           torch.zeros(len(y), dtype=torch.long), reduction="none")
    torch.testing.assert_close(robust_ce[:, 0], want)
    assert bool((ilb <= iub).all())


@pytest.mark.parametrize("name", ["mlp", "cnn_bn"])
def test_fused_crown_ibp_is_the_exp_chord_through_one_crown_ibp_row_and_sound(name):
    net, x, y = make_case(name, seed=34, batch=5)
    model = fused(net, x, y)
    model(clipped(x), y)
    _, iub = model.compute_bounds(x=(clipped(x), y), IBP=True, C=None, method=None)
    lb, cub = model.compute_bounds(IBP=False, C=None, method="backward", bound_lower=False, bound_upper=True)
    m = model[model.final_name].input_name  # the exp node feeds the sum
    exp_node = model[m[0]]
    assert isinstance(exp_node, BoundExp) and lb is None and cub.shape == (5, 1)
    # by hand: IBP interval of z = y - y_label (label row folded into the last layer), chord of exp, one row
    with torch.no_grad():
        n = net(x).shape[1]
    D = torch.eye(n, dtype=x.dtype)[None] - F.one_hot(y, n).to(x.dtype)[:, None, :]
    z = native(net, x, D, "ibp")
    zl, zu = z.lower[0], z.upper[0]
    mm = zu.max(1, keepdim=True)[0]
    k = (torch.exp(zu - mm) - torch.exp(zl - mm)) / (zu - zl).clamp(min=1e-8)
    k = k.clamp(min=1e-8)
    lam = k - k.sum(1, keepdim=True) * F.one_hot(y, n).to(x.dtype)
    up = -native(net, x, -lam[:, None, :], "crown-ibp").lower[0]
    want = up + (torch.exp(zl - mm) - k * zl).sum(1, keepdim=True)  # exp(z - m) <= k (z - zl) + exp(zl - m)
    torch.testing.assert_close(cub, want)
    torch.testing.assert_close(exp_node.max_input, mm)
    assert not exp_node.max_input.requires_grad  # detached in the backward pass, as auto_LiRPA's
    # sound: every point of the box has sum_j exp(z_j - m) <= cub (and <= iub)
    pts = sample_box(x, EPS, 64, 0.0, 1.0, seed=3)
    with torch.no_grad():
        ys = net(pts.flatten(0, 1)).view(64, 5, n)
        val = torch.exp(ys - ys.gather(2, y[None, :, None].expand(64, 5, 1)) - mm).sum(2, keepdim=True)
    assert bool((val <= cub + 1e-9).all()) and bool((val <= iub + 1e-9).all())


def test_fused_logits_through_final_node_name_and_the_graph_names():
    """cifar_training.py: final_name of the plain module, shifted by the labels input in the wrapper."""
    net, x, y = make_case("cnn_bn", seed=35, batch=3)
    plain = BoundedModule(net, x)
    model = fused(net, x, y)
    final2 = model._modules[plain.final_name].output_name[0]
    assert type(plain._modules[plain.final_name]) is type(model._modules[final2]) is BoundLinear
    assert isinstance(plain.final_node(), BoundLinear) and plain.output_name == [plain.final_name]
    assert isinstance(model[model.input_name[1]].output_name and model[plain.final_name], BoundRelu)
    with pytest.raises(KeyError, match="no node"):
        plain["/99"]
    dp = BoundDataParallel(model)
    torch.testing.assert_close(dp((clipped(x), y), final_node_name=final2), net(x))
    C = spec(net, x, y)
    lb, _ = dp(method_opt="compute_bounds", IBP=True, C=C, method=None, final_node_name=final2, no_replicas=True)
    torch.testing.assert_close(lb, native(net, x, C, "ibp").lower[0])
    with pytest.raises(UnsupportedFeatureError, match="not intermediate nodes"):
        plain.compute_bounds(x=(clipped(x),), C=C, method="IBP", final_node_name="/2")


def test_loss_fusion_refusals():
    net, x, y = make_case("mlp", seed=36, batch=3)
    model = fused(net, x, y)
    with pytest.raises(UnsupportedFeatureError, match="full CROWN"):
        model.compute_bounds(x=(clipped(x), y), method="backward", bound_lower=False)
    model.compute_bounds(x=(clipped(x), y), IBP=True, method=None)
    with pytest.raises(UnsupportedFeatureError, match="from above only"):
        model.compute_bounds(method="backward")
    with pytest.raises(UnsupportedFeatureError, match="C=None"):
        model.compute_bounds(C=spec(net, x, y), IBP=True, method=None)
    with pytest.raises(gmbound.BoundInputError, match="labels must lie"):
        model(clipped(x), torch.full((3,), 7))
    with pytest.raises(UnsupportedFeatureError, match="x and labels"):
        model(clipped(x))
    with pytest.raises(UnsupportedFeatureError, match="gm_loss"):
        model.gm_loss((clipped(x), y), y)


# ---------------------------------------------------------- item 4: state_dict of an auto_LiRPA module
def lirpa_keys(net):
    """auto_LiRPA numbers the traced graph's inputs: the input (not numbered), then the model's state_dict
    entries from 1 in order; num_batches_tracked takes a number but is no node (seen on cnn_7layer_bn)."""
    out = {}
    for k, (name, value) in enumerate(net.state_dict().items(), start=1):
        if not name.endswith("num_batches_tracked"):
            kind = "buffer" if name.endswith(("running_mean", "running_var")) else "param"
            out[f"/{k}.{kind}"] = value.clone() + 1.0
    return out


def test_an_auto_lirpa_state_dict_loads():
    net, x, y = make_case("cnn_bn", seed=37, batch=2)
    model = BoundedModule(net, x)
    theirs = lirpa_keys(net)
    assert "/7.buffer" not in theirs and "/3.param" in theirs
    before = {k: v.clone() for k, v in net.state_dict().items()}
    model.load_state_dict(theirs)
    for k, v in net.state_dict().items():
        if k.endswith("num_batches_tracked"):
            assert torch.equal(v, before[k])
        else:
            torch.testing.assert_close(v, before[k] + 1.0)
    bad = dict(theirs)
    bad["/1.param"] = torch.zeros(3)
    with pytest.raises(gmbound.BoundInputError, match="'/1.param' has shape"):
        model.load_state_dict(bad)
    bad.pop("/1.param")
    with pytest.raises(gmbound.BoundInputError, match="not the same model"):
        model.load_state_dict(bad)
    model.load_state_dict(net.state_dict())  # our own keys still load


def test_activation_bound_option_default_is_adaptive_and_others_are_refused():
    net, x, y = make_case("mlp", seed=38, batch=2)
    C = spec(net, x, y)
    lb, _ = BoundedModule(net, x, bound_opts={"activation_bound_option": None}).compute_bounds(
        x=(clipped(x),), C=C, method="CROWN-IBP")
    torch.testing.assert_close(lb, native(net, x, C, "crown-ibp").lower[0])
    for value in ("same-slope", "zero-lb", "one-lb"):
        with pytest.raises(UnsupportedFeatureError, match=f"'{value}'"):
            BoundedModule(net, x, bound_opts={"activation_bound_option": value})


# ------------------------------------------------------------- item 3: the other names trainers import
def test_star_import_of_perturbations_hands_out_numpy_and_torch():
    ns = {}
    exec("from gmbound.compat.perturbations import *", ns)
    assert ns["np"] is np and ns["torch"] is torch and ns["PerturbationLpNorm"] is PerturbationLpNorm
    for refused in ("PerturbationL0Norm", "PerturbationSynonym", "PerturbationLinear"):
        with pytest.raises(UnsupportedFeatureError, match=refused):
            ns[refused](eps=1)
    with pytest.raises(UnsupportedFeatureError, match="weight perturbation"):
        BoundedParameter(torch.zeros(2), PerturbationLpNorm(eps=0.1))
    from gmbound.compat import register_custom_op
    from gmbound.compat.utils import Flatten
    with pytest.raises(UnsupportedFeatureError, match="register_custom_op"):
        register_custom_op("custom::op", object)
    assert Flatten()(torch.zeros(2, 3, 4)).shape == (2, 12)


def test_utils():
    meter = MultiAverageMeter()
    meter.update("CE", 1.0, 2)
    meter.update("CE", torch.tensor(4.0), 1)
    meter.update("Err", 0.5)
    meter.update("skip", None)
    assert str(meter) == "CE=2.0000 Err=0.5000" and meter.avg("missing") == 0.0 and meter.last("CE") == 4.0
    y = torch.tensor([2, 0])
    c = get_spec_matrix(torch.zeros(2, 3, dtype=torch.float64), y, 3)
    want = torch.tensor([[[-1., 0., 1.], [0., -1., 1.]], [[1., -1., 0.], [1., 0., -1.]]], dtype=torch.float64)
    assert torch.equal(c, want)
    assert logger.isEnabledFor(20)


def test_sync_params_with_our_keys():
    net, x, y = make_case("cnn_bn", seed=39, batch=2)
    model = BoundDataParallel(fused(net, x, y))
    copy = make_case("cnn_bn", seed=40, batch=2)[0]
    state = sync_params(copy, model, loss_fusion=True)
    for k, v in net.state_dict().items():
        assert torch.equal(copy.state_dict()[k], v) and torch.equal(state[k], v)
    with pytest.raises(gmbound.BoundInputError, match="'model.'"):
        sync_params(copy, BoundedModule(net, x), loss_fusion=True)


def test_linear_and_fixed_schedulers():
    s = LinearScheduler(0.4, "start=2,length=2")
    s.set_epoch_length(4)
    seen = []
    for _ in range(4):
        s.step_epoch(verbose=False)
        for _ in range(4):
            s.step_batch()
            seen.append(s.get_eps())
    want = [0.0] * 4 + [0.05 * i for i in range(4)] + [0.2 + 0.05 * i for i in range(4)] + [0.4] * 4
    assert seen == pytest.approx(want)
    assert FixedScheduler(0.3).get_eps() == 0.3 and FixedScheduler(0.3).reached_max_eps()


def test_smoothed_scheduler_is_the_deepmind_ramp():
    s = SmoothedScheduler(1.0, "start=2,length=4,mid=0.5")
    s.set_epoch_length(10)
    eps = []
    for _ in range(6):
        s.step_epoch()
        for _ in range(10):
            s.step_batch()
            eps.append(s.get_eps())
    t0, t1 = 10, 50                       # the ramp, in batches: from epoch 2 to the end of epoch 5
    t_mid = 30
    assert eps[:t0 + 1] == [0.0] * (t0 + 1)
    assert eps[t1] == pytest.approx(1.0) and eps[-1] == 1.0
    # power law before the mid point, linear after it, meeting with one slope
    alpha = 1.0 / ((t1 - t_mid) * 4 * (t_mid - t0) ** 3 + (t_mid - t0) ** 4)
    assert eps[20] == pytest.approx(alpha * (20 - t0) ** 4)
    slope = (eps[40] - eps[35]) / 5
    assert slope == pytest.approx(4 * alpha * (t_mid - t0) ** 3)
    with pytest.raises(ValueError, match="epoch_length"):
        s.set_epoch_length(11)


def test_adaptive_scheduler_steps_with_the_loss():
    s = AdaptiveScheduler(1.0, "start=1,min_step=0.01,max_step=0.1")
    s.step_epoch()
    s.step_batch()
    assert s.get_eps() == pytest.approx(0.01)                      # no loss history yet
    s.update_loss(1.0)
    s.update_loss(0.5)                                             # falling: the step grows x1.5
    s.step_batch()
    assert s.get_eps() == pytest.approx(0.025)
    s.update_loss(2.0)                                # rising 4x: the step halves, not below min_step
    s.step_batch()
    assert s.get_eps() == pytest.approx(0.035)
    assert math.isnan(AdaptiveScheduler(1.0, "start=1").loss)
    assert s.get_eps() == pytest.approx(0.035)
    assert math.isnan(AdaptiveScheduler(1.0, "start=1").loss)


# ------------------------------------------------- item 5: plain nn.Modules as auto_LiRPA's examples write them
class MLP3(nn.Module):
    """auto_LiRPA's mlp_3layer in miniature: functional relu and torch.flatten in forward()."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(2 * 6 * 6, 16), nn.Linear(16, 12), nn.Linear(12, 5)

    def forward(self, x):
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def resnet_like():
    return DenseSequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(),
        Dense(nn.Conv2d(4, 4, 3, padding=1)), nn.ReLU(),
        Dense(nn.Conv2d(4, 4, 1), None, nn.Conv2d(4, 4, 3, padding=1)), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 6 * 6, 5))


@pytest.mark.parametrize("factory", [MLP3, resnet_like])
def test_plain_modules_of_the_auto_lirpa_examples(factory):
    torch.manual_seed(41)
    net = factory().double()
    g = torch.Generator().manual_seed(41)
    x = torch.rand(4, 2, 6, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (4,), generator=g)
    model, C = BoundedModule(net, x), spec(net, x, y)
    torch.testing.assert_close(model(clipped(x)), net(x))
    ilb, _ = model.compute_bounds(IBP=True, C=C, method=None)
    clb, _ = model.compute_bounds(IBP=False, C=C, method="backward", bound_upper=False)   # reuses IBP: CROWN-IBP
    torch.testing.assert_close(ilb, native(net, x, C, "ibp").lower[0])
    torch.testing.assert_close(clb, native(net, x, C, "crown-ibp").lower[0])
    assert isinstance(model.final_node(), BoundLinear)
    # loss fusion on the traced model: the names shift by the labels input, the IBP loss is the robust CE
    fused_model = fused(net, x, y)
    final2 = fused_model._modules[model.final_name].output_name[0]
    assert type(fused_model._modules[final2]) is type(model.final_node())
    _, iub = fused_model.compute_bounds(x=(clipped(x), y), IBP=True, method=None)
    robust = torch.log(iub)[:, 0] + fused_model[fused_model.final_node().input_name[0]].max_input[:, 0]
    want = F.cross_entropy(-torch.cat([torch.zeros_like(ilb[:, :1]), ilb], 1), torch.zeros(4, dtype=torch.long),
                           reduction="none")
    torch.testing.assert_close(robust, want)


def test_dense_sequential_node_graph_follows_its_residual_sums():
    """auto_LiRPA's DenseSequential is an nn.Sequential with its own forward: traced, not chained."""
    torch.manual_seed(42)
    model = BoundedModule(resnet_like().double(), torch.zeros(1, 2, 6, 6, dtype=torch.float64))
    sums = [n for n in model.nodes() if type(n).__name__ == "BoundAdd"]
    relus = [n for n in model.nodes() if isinstance(n, BoundRelu)]
    assert len(sums) >= 1 and all(len(n.input_name) == 2 for n in sums) and len(relus) == 3

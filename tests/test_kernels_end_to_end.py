"""The compiled primitive set inside the drivers: same bounds and gradients as the reference, sound.

The drivers of ``gmbound.propagation`` (IBP + CROWN-IBP via ``spec_bounds``, full CROWN) and the
GM loss run once on the compiled kernels and once on the reference primitives; float64 results
must agree to rounding. Soundness is checked by sampling the clipped boxes on the compiled path.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import gmbound
from gmbound.models import build_model
from gmbound import _extension, propagation
from gmbound.engine import BACKENDS, get_primitives
from gmbound.network import build_graph
from gmbound.reference import primitives as R
from backends import DEVICES, needs_extension
from nets import NETS, make_case, sample_box

pytestmark = needs_extension
EPS = [0.0, 0.03, 0.1, 0.3]
TIGHT = dict(rtol=1e-9, atol=1e-9)


@pytest.fixture(autouse=True)
def _no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def wide_cnn(seed: int) -> nn.Sequential:
    """Bigger than the nets of nets.py: odd sizes, strides 1-3, padding, a bias-free conv (dilation: nets.cnn;
    float64 dilated convolutions are very slow on CPU, which matters for the sampling below)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=1, padding=1), nn.ReLU(),
        nn.Conv2d(8, 6, 3, stride=2, padding=2), nn.ReLU(),
        nn.Conv2d(6, 5, 2, stride=3, padding=1, bias=False), nn.ReLU(),
        nn.Flatten(), nn.Linear(5 * 3 * 3, 17), nn.ReLU(), nn.Linear(17, 7)).double().eval()


def case(name: str, seed: int, batch: int = 3):
    if name == "wide_cnn":
        net = wide_cnn(seed)
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(batch, 3, 11, 11, generator=g, dtype=torch.float64)
        y = torch.randint(0, 7, (batch,), generator=g)
        return net, x, y
    return make_case(name, seed, batch)


NAMES = sorted(NETS) + ["wide_cnn"]


def _driver_inputs(net, x, y, eps, clip, device):
    ops = build_graph(net)  # the bound graph: a chain for these Sequentials
    shapes = ops.infer_shapes(tuple(x.shape[1:]))
    n_out = net(x.cpu()).shape[1]
    C = gmbound.margin_spec(y, n_out, dtype=x.dtype).to(device)
    spec = torch.cat([C, -C], 1)
    radii = torch.tensor(eps, dtype=x.dtype, device=device).unsqueeze(1).expand(-1, x.shape[0])
    lo, hi = (torch.tensor(0.0, dtype=x.dtype, device=device), torch.tensor(1.0, dtype=x.dtype, device=device)) \
        if clip else (None, None)
    return ops, shapes, spec, radii, lo, hi


# ----------------------------------------------------------------------------- drivers
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("clip", [True, False])
def test_spec_bounds_match_reference(device, name, clip):
    net, x, y = case(name, 3)
    net, x = net.to(device), x.to(device)
    ops, shapes, spec, radii, lo, hi = _driver_inputs(net, x, y.to(device), EPS, clip, device)
    prims = get_primitives(device, device)
    assert prims is not R
    got = propagation.spec_bounds(ops, shapes, prims.input_box(x, radii, lo, hi), spec, prims, True, True)
    ref = propagation.spec_bounds(ops, shapes, R.input_box(x, radii, lo, hi), spec, R, True, True)
    torch.testing.assert_close(got.ibp, ref.ibp, **TIGHT)
    torch.testing.assert_close(got.crown, ref.crown, **TIGHT)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", NAMES)
def test_full_crown_matches_reference(device, name):
    net, x, y = case(name, 4)
    net, x = net.to(device), x.to(device)
    ops, shapes, spec, radii, lo, hi = _driver_inputs(net, x, y.to(device), EPS, True, device)
    prims = get_primitives(device, device)
    got = propagation.full_crown_bounds(ops, shapes, prims.input_box(x, radii, lo, hi), spec, prims, chunk=16)
    ref = propagation.full_crown_bounds(ops, shapes, R.input_box(x, radii, lo, hi), spec, R, chunk=16)
    torch.testing.assert_close(got, ref, **TIGHT)


@pytest.mark.parametrize("method", ["ibp", "crown-ibp", "crown"])
@pytest.mark.parametrize("name", NAMES)
def test_bounded_sequential_backends_agree(name, method):
    net, x, y = case(name, 5)
    bnet = gmbound.BoundedSequential(net)
    eps = torch.tensor(EPS, dtype=torch.float64)
    a = bnet.bounds(x, eps, method=method, beta=0.6, x_min=0.0, x_max=1.0, backend="cpu")
    b = bnet.bounds(x, eps, method=method, beta=0.6, x_min=0.0, x_max=1.0, backend="reference")
    torch.testing.assert_close(a.lower, b.lower, **TIGHT)
    torch.testing.assert_close(a.upper, b.upper, **TIGHT)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_gm_loss_gradients_match_reference(device, name, beta):
    """Training needs the weight gradients: the GM loss's gradients agree across backends."""
    net, x, y = case(name, 6, batch=4)
    net, x, y = net.to(device), x.to(device), y.to(device)
    grads = {}
    for backend in (device, "reference"):
        net.zero_grad()
        res = gmbound.gm_loss(net, x, y, 0.2, n_radii=4, kappa=0.3, beta=beta, x_min=0.0, x_max=1.0,
                              backend=backend)
        res.loss.backward()
        grads[backend] = (res.loss.detach(), [p.grad.clone() for p in net.parameters()])
    torch.testing.assert_close(grads[device][0], grads["reference"][0], **TIGHT)
    for a, b in zip(grads[device][1], grads["reference"][1]):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9)


def test_train_mode_batchnorm_gradients_match_reference():
    net, x, y = case("cnn_bn", 7, batch=5)
    net.train()
    grads = {}
    for backend in ("cpu", "reference"):
        net.zero_grad()
        gmbound.gm_loss(net, x, y, 0.1, n_radii=3, kappa=0.0, x_min=0.0, x_max=1.0, backend=backend).loss.backward()
        grads[backend] = [p.grad.clone() for p in net.parameters()]
    for a, b in zip(grads["cpu"], grads["reference"]):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9)


def test_dm_small_mnist_shapes_match_reference():
    """The DeepMind small model on MNIST-sized inputs (the benchmark's smallest net), N = 4."""
    net = build_model("dm-small", 1, 28).double().eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 28, 28, generator=g, dtype=torch.float64)
    y = torch.tensor([3, 7])
    bnet = gmbound.BoundedSequential(net)
    eps = torch.tensor([0.05, 0.1, 0.2, 0.3], dtype=torch.float64)
    a = bnet.margin_bounds(x, y, eps, method="crown-ibp", x_min=0, x_max=1, backend="cpu")
    b = bnet.margin_bounds(x, y, eps, method="crown-ibp", x_min=0, x_max=1, backend="reference")
    torch.testing.assert_close(a, b, **TIGHT)


# ----------------------------------------------------------------------------- soundness
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("method", ["ibp", "crown-ibp", "crown"])
@pytest.mark.parametrize("name", NAMES)
def test_compiled_bounds_are_sound_by_sampling(name, method, dtype):
    net, x, y = case(name, 8)
    net, x = net.to(dtype), x.to(dtype)
    bnet = gmbound.BoundedSequential(net)
    eps = [0.0, 0.02, 0.08, 0.3]
    C = gmbound.margin_spec(y, net(x).shape[1], dtype=dtype)
    with torch.no_grad():
        spec_b = bnet.bounds(x, torch.tensor(eps, dtype=dtype), C, method=method, x_min=0.0, x_max=1.0,
                             backend="cpu")
        for i, r in enumerate(eps):
            pts = sample_box(x, r, 1000, 0.0, 1.0, seed=100 + i)                  # [1000, B, *S]
            out = net(pts.flatten(0, 1)).unflatten(0, pts.shape[:2])
            margins = torch.einsum("bkc,nbc->nbk", C, out)
            # float64: rounding only; float32: a few ulps of the outputs' magnitude (see BoundedSequential)
            tol = 1e-9 if dtype == torch.float64 else 1e-5 * max(1.0, float(out.abs().max()))
            assert (margins >= spec_b.lower[i] - tol).all()
            assert (margins <= spec_b.upper[i] + tol).all()


# ----------------------------------------------------------------------------- dispatch
def test_backend_dispatch():
    from gmbound.engine import compiled

    assert BACKENDS == ("auto", "cuda", "cpu", "reference")
    assert get_primitives("auto", "cpu") is compiled
    assert get_primitives("cpu", torch.device("cpu")) is compiled
    assert get_primitives("reference", "cpu") is R
    with pytest.raises(ValueError, match="backend must be one of"):
        get_primitives("fast", "cpu")
    with pytest.raises(ValueError, match="runs on cuda tensors"):
        get_primitives("cuda", "cpu")
    with pytest.raises(ValueError, match="runs on cpu tensors"):
        get_primitives("cpu", "cuda")
    if _extension.has_cuda_kernels():
        assert get_primitives("auto", "cuda") is compiled
    else:
        with pytest.raises(RuntimeError, match="without CUDA kernels"):
            get_primitives("cuda", "cuda")


def test_a_modified_box_is_not_read_from_x():
    """The first layer reads x directly only while the box from input_box is untouched."""
    from gmbound.engine import compiled

    net, x, y = case("wide_cnn", 9)
    conv = net[0]
    radii = torch.full((2, x.shape[0]), 0.1, dtype=torch.float64)
    lower, upper = compiled.input_box(x, radii, None, None)
    lower.add_(-0.05)  # a different, wider box now
    got = compiled.interval_conv2d(lower, upper, conv.weight, conv.bias, conv.stride, conv.padding,
                                   conv.dilation, False)
    ref = R.interval_conv2d(lower, upper, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, False)
    torch.testing.assert_close(got[0], ref[0], **TIGHT)
    torch.testing.assert_close(got[1], ref[1], **TIGHT)


def test_other_dtypes_fall_back_to_the_reference_ops():
    """The kernels take float32 / float64; the compiled set hands bfloat16 to the reference ops."""
    net, x, y = case("mlp", 10)
    net, x = net.to(torch.bfloat16), x.to(torch.bfloat16)
    bnet = gmbound.BoundedSequential(net)
    a = bnet.bounds(x, [0.05, 0.1], method="crown-ibp", x_min=0.0, x_max=1.0, backend="cpu")
    b = bnet.bounds(x, [0.05, 0.1], method="crown-ibp", x_min=0.0, x_max=1.0, backend="reference")
    # the same ops, summed in another order: bfloat16 rounding (8 significant bits) apart
    lo_a, lo_b = a.lower.detach().float(), b.lower.detach().float()
    torch.testing.assert_close(lo_a, lo_b, rtol=2e-2, atol=2e-2 * float(lo_b.abs().max()))


def test_inference_mode():
    """Inference tensors carry no version counter: the compiled path must still run (and agree)."""
    net, x, y = case("wide_cnn", 11)
    bnet = gmbound.BoundedSequential(net)
    with torch.inference_mode():
        a = bnet.bounds(x, [0.05, 0.1], method="crown-ibp", x_min=0.0, x_max=1.0, backend="cpu")
    b = bnet.bounds(x, [0.05, 0.1], method="crown-ibp", x_min=0.0, x_max=1.0, backend="reference")
    torch.testing.assert_close(a.lower, b.lower.detach(), **TIGHT)
    torch.testing.assert_close(a.upper, b.upper.detach(), **TIGHT)


@pytest.mark.parametrize("out_features", [7, 400])  # fewer / more weight rows than Lambda rows (96)
def test_lambda_onto_a_flattened_image_comes_channels_last(out_features):
    """A ReLU + Linear step whose Linear reads a flattened [C, H, W] image: Lambda comes back on the
    image, equal to the reference's, and (when the weight is the smaller copy) in channels-last blocks,
    so the convolution step below needs no copy of it."""
    from gmbound.engine import compiled
    g = torch.Generator().manual_seed(11)
    c, h, w = 5, 4, 3
    lam = torch.randn(1, 4, 6, out_features, generator=g, dtype=torch.float64, requires_grad=True)
    lower = torch.randn(4, 4, out_features, generator=g, dtype=torch.float64)
    upper = lower + torch.rand(4, 4, out_features, generator=g, dtype=torch.float64)
    weight = torch.randn(out_features, c * h * w, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(out_features, generator=g, dtype=torch.float64)
    got, term = compiled.relu_affine_backward(lam, lower, upper, weight, bias, None, unflatten=(c, h, w))
    ref_lam, ref_term = R.relu_backward(lam, lower, upper)
    ref_lam, t2 = R.linear_backward(ref_lam, weight, bias)
    ref_lam = ref_lam.unflatten(-1, (c, h, w))
    assert got.shape == (4, 4, 6, c, h, w)
    torch.testing.assert_close(got, ref_lam, **TIGHT)
    torch.testing.assert_close(term, ref_term + t2, **TIGHT)
    assert got.flatten(0, 2).is_contiguous(memory_format=torch.channels_last) == (out_features <= 96)
    probe = torch.randn(got.shape, generator=g, dtype=torch.float64)
    g_got = torch.autograd.grad((got * probe).sum() + term.sum(), (lam, weight))
    g_ref = torch.autograd.grad((ref_lam * probe).sum() + (ref_term + t2).sum(), (lam, weight))
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a, b, **TIGHT)

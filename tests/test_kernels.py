"""Compiled kernels (torch.ops.gmbound) against the reference primitives: values, gradients, op checks.

Every op is compared with its pure-PyTorch twin in ``gmbound.reference.primitives`` on fresh
random inputs (odd sizes, N from 1 to 16, M = 1 or N, several strides / paddings / dilations).

Tolerances. float64: 1e-10 relative to the largest reference value (only summation order
differs). float32: the compiled float32 result is compared with the float64 reference on the same
inputs; 1e-4 relative to the largest value covers float32 rounding of sums of a few hundred terms
(oneDNN / MKL reorder them; our own reductions accumulate in double on CPU, float on CUDA).
CUDA cases run only where a GPU is present; TF32 is switched off for them.
"""
from __future__ import annotations

import pytest
import torch

from gmbound.reference import primitives as R
from backends import DEVICES, HAVE_EXT, needs_extension

pytestmark = needs_extension
DTYPES = [torch.float64, torch.float32]
ops = torch.ops.gmbound if HAVE_EXT else None


@pytest.fixture(autouse=True)
def _no_tf32():
    """Exact float32 products on Ampere+ GPUs, so float32 tolerances mean the same as on CPU."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# ----------------------------------------------------------------------------- helpers
def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(g, *shape, dtype=torch.float64):
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


def rand_bounds(g, *shape, width: float = 1.5, slope: float = 0.0):
    """``lower <= upper`` with every ReLU case present: inactive, active, unstable both ways, and
    the edge cases the kernels must treat as the reference does (exact zeros, l == u, and the tie
    of the adaptive lower slope u == (2a - 1) l, a = ``slope``: u == -l for ReLU)."""
    lower = torch.randn(shape, generator=g, dtype=torch.float64)
    upper = lower + width * torch.rand(shape, generator=g, dtype=torch.float64)
    pick = torch.rand(shape, generator=g)
    lower = torch.where(pick < 0.03, torch.zeros_like(lower), lower)                # l == 0
    upper = torch.where((pick >= 0.03) & (pick < 0.06) & (lower < 0), (2 * slope - 1) * lower, upper)  # tie
    upper = torch.where((pick >= 0.06) & (pick < 0.08), lower, upper)               # l == u
    return lower, torch.maximum(lower, upper)


def rand_lam(g, *shape):
    lam = torch.randn(shape, generator=g, dtype=torch.float64)
    return torch.where(torch.rand(shape, generator=g) < 0.05, torch.zeros_like(lam), lam)  # exact zeros


def to(xs, device, dtype):
    return [None if x is None else x.to(device=device, dtype=dtype) for x in xs]


def assert_close(actual, expected, dtype, what=""):
    """``actual`` (compiled, in ``dtype``) against ``expected`` (reference, float64)."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    rel = 1e-10 if dtype == torch.float64 else 1e-4
    scale = max(1.0, float(expected.detach().abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rel, atol=rel * scale, msg=lambda m: f"{what}: {m}")


def check_against_reference(compiled_fn, reference_fn, inputs, device, dtype, seed=0, grads=True):
    """Outputs and gradients w.r.t. every tensor input of ``compiled_fn`` (in ``dtype`` on ``device``)
    against ``reference_fn`` in float64 on CPU, for one random cotangent per output."""
    ref_in = [None if x is None else x.detach().double().requires_grad_(grads) for x in inputs]
    cmp_in = [None if x is None else x.detach().to(device=device, dtype=dtype).requires_grad_(grads)
              for x in inputs]
    ref_out = reference_fn(*ref_in)
    cmp_out = compiled_fn(*cmp_in)
    ref_out = ref_out if isinstance(ref_out, tuple) else (ref_out,)
    cmp_out = cmp_out if isinstance(cmp_out, tuple) else (cmp_out,)
    assert len(ref_out) == len(cmp_out)
    for i, (a, e) in enumerate(zip(cmp_out, ref_out)):
        assert a.shape == e.shape, f"output {i}: shape {tuple(a.shape)} != {tuple(e.shape)}"
        assert a.dtype == dtype and a.device.type == torch.device(device).type
        assert_close(a, e, dtype, f"output {i}")
    if not grads:
        return
    g = gen(seed + 99)
    cots = [torch.randn(e.shape, generator=g, dtype=torch.float64) for e in ref_out]
    live = [i for i, e in enumerate(ref_out) if e.requires_grad]  # e.g. a zero bias term is a constant
    wanted = [i for i, x in enumerate(inputs) if x is not None]
    ref_g = torch.autograd.grad([ref_out[i] for i in live], [ref_in[i] for i in wanted], [cots[i] for i in live],
                                allow_unused=True)
    cmp_g = torch.autograd.grad([cmp_out[i] for i in live], [cmp_in[i] for i in wanted],
                                [cots[i].to(device, dtype) for i in live], allow_unused=True)
    for i, a, e in zip(wanted, cmp_g, ref_g):
        e = torch.zeros_like(ref_in[i]) if e is None else e
        a = torch.zeros_like(cmp_in[i]) if a is None else a
        assert a.shape == e.shape
        assert_close(a, e, dtype, f"gradient w.r.t. input {i}")


def conv_geometry(h, w, k, s, p, d):
    ho = (h + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1
    wo = (w + 2 * p[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1
    natural = ((ho - 1) * s[0] - 2 * p[0] + d[0] * (k[0] - 1) + 1, (wo - 1) * s[1] - 2 * p[1] + d[1] * (k[1] - 1) + 1)
    return (ho, wo), (h - natural[0], w - natural[1])


# (N, B, C_in, C_out, H, W, kernel, stride, padding, dilation)
CONV_CASES = [
    (1, 1, 1, 1, 5, 5, (3, 3), (1, 1), (0, 0), (1, 1)),
    (2, 3, 3, 4, 7, 6, (3, 2), (2, 1), (1, 0), (1, 2)),
    (16, 1, 2, 5, 9, 8, (4, 4), (2, 2), (2, 2), (1, 1)),
    (4, 1, 5, 1, 6, 7, (2, 3), (1, 2), (0, 1), (2, 1)),
    (3, 2, 4, 3, 8, 8, (3, 3), (3, 3), (1, 1), (1, 1)),
]
LINEAR_CASES = [(1, 1, 1, 1), (3, 2, 7, 5), (16, 3, 13, 4), (5, 4, 32, 17)]  # (N, B, in, out)


def _ids(cases):
    return [f"case{i}" for i in range(len(cases))]


# ----------------------------------------------------------------------------- interval steps
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", LINEAR_CASES, ids=_ids(LINEAR_CASES))
@pytest.mark.parametrize("relu_input", [False, True])
@pytest.mark.parametrize("has_bias", [True, False])
def test_interval_linear(device, dtype, case, relu_input, has_bias):
    n, b, d_in, d_out = case
    g = gen(hash((case, relu_input, has_bias)) % 2 ** 31)
    lower, upper = rand_bounds(g, n, b, d_in)
    w, bias = randn(g, d_out, d_in), (randn(g, d_out) if has_bias else None)
    check_against_reference(
        lambda l, u, w, bb: ops.interval_linear(l, u, w, bb, relu_input),
        lambda l, u, w, bb: R.interval_linear(l, u, w, bb, relu_input),
        [lower, upper, w, bias], device, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES, ids=_ids(CONV_CASES))
@pytest.mark.parametrize("relu_input", [False, True])
def test_interval_conv2d(device, dtype, case, relu_input):
    n, b, cin, cout, h, w_, k, s, p, d = case
    g = gen(hash((case, relu_input)) % 2 ** 31)
    lower, upper = rand_bounds(g, n, b, cin, h, w_)
    w, bias = randn(g, cout, cin, *k), (randn(g, cout) if n % 2 == 0 else None)
    check_against_reference(
        lambda l, u, w, bb: ops.interval_conv2d(l, u, w, bb, list(s), list(p), list(d), relu_input),
        lambda l, u, w, bb: R.interval_conv2d(l, u, w, bb, s, p, d, relu_input),
        [lower, upper, w, bias], device, dtype)


def _domain(g, kind, x):
    if kind == "none":
        return None, None
    if kind == "scalar":
        return torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    lo = (x - 0.3 * torch.rand(x.shape, generator=g, dtype=torch.float64)).clamp(max=x)
    return lo, None  # per-pixel lower limit only


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("domain", ["none", "scalar", "tensor"])
@pytest.mark.parametrize("layer", ["linear", "conv"])
def test_interval_input_layer(device, dtype, domain, layer):
    """The first layer read straight from x and the radii equals input_box + the interval step."""
    g = gen(hash((domain, layer)) % 2 ** 31)
    n, b = 4, 3
    x = torch.rand((b, 7) if layer == "linear" else (b, 2, 6, 5), generator=g, dtype=torch.float64)
    radii = 0.4 * torch.rand(n, b, generator=g, dtype=torch.float64)
    radii[0, 0] = 0.0  # a point box: ties in the clipping
    x_min, x_max = _domain(g, domain, x)
    if layer == "linear":
        w, bias = randn(g, 5, 7), randn(g, 5)
        cmp = lambda x, r, lo, hi, w, bb: ops.interval_input_linear(x, r, lo, hi, w, bb)  # noqa: E731
        ref = lambda x, r, lo, hi, w, bb: R.interval_linear(*R.input_box(x, r, lo, hi), w, bb, False)  # noqa: E731
    else:
        w, bias = randn(g, 3, 2, 3, 2), randn(g, 3)
        cmp = lambda x, r, lo, hi, w, bb: ops.interval_input_conv2d(  # noqa: E731
            x, r, lo, hi, w, bb, [2, 1], [1, 1], [1, 2])
        ref = lambda x, r, lo, hi, w, bb: R.interval_conv2d(  # noqa: E731
            *R.input_box(x, r, lo, hi), w, bb, (2, 1), (1, 1), (1, 2), False)
    check_against_reference(cmp, ref, [x, radii, x_min, x_max, w, bias], device, dtype)


# ----------------------------------------------------------------------------- CROWN steps
# (N, B, K, S); the last is big enough to run the CPU kernels on several threads
RELAX_CASES = [(1, 1, 1, (1,)), (3, 2, 4, (5, 3, 2)), (16, 2, 3, (7,)), (5, 3, 2, (2, 4, 4)), (16, 3, 5, (8, 16, 16))]
# negative slopes a of the (leaky) ReLU relaxation: ReLU, and a leaky ReLU whose tie u == (2a - 1) l
# is exact in float32 and float64 alike (2a - 1 = -1/2)
SLOPES = [0.0, 0.25]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", RELAX_CASES, ids=_ids(RELAX_CASES))
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("slope", SLOPES)
def test_relu_relax(device, dtype, case, shared, slope):
    n, b, k, s = case
    g = gen(hash((case, shared, slope)) % 2 ** 31)
    lower, upper = rand_bounds(g, n, b, *s, slope=slope)
    lam = rand_lam(g, 1 if shared else n, b, k, *s)
    check_against_reference(lambda *t: ops.relu_relax(*t, slope), lambda *t: R.relu_backward(*t, slope),
                            [lam, lower, upper], device, dtype)


def _ref_linear_step(lam, lower, upper, w, bias, slope=0.0):
    term = None
    if lower is not None:
        lam, term = R.relu_backward(lam, lower, upper, slope)
    lam, t2 = R.linear_backward(lam, w, bias)
    terms = [t for t in (term, t2) if t is not None]
    total = sum(terms) if terms else torch.zeros(lam.shape[:3], dtype=lam.dtype)
    return lam, total


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", LINEAR_CASES, ids=_ids(LINEAR_CASES))
@pytest.mark.parametrize("relax", [True, False])
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("has_bias", [True, False])
@pytest.mark.parametrize("slope", SLOPES)
def test_crown_linear_step(device, dtype, case, relax, shared, has_bias, slope):
    n, b, d_in, d_out = case
    g = gen(hash((case, relax, shared, has_bias, slope)) % 2 ** 31)
    k = 3
    lower, upper = rand_bounds(g, n, b, d_out, slope=slope) if relax else (None, None)
    lam = rand_lam(g, 1 if shared else n, b, k, d_out)
    w, bias = randn(g, d_out, d_in), (randn(g, d_out) if has_bias else None)
    check_against_reference(lambda *t: ops.crown_linear_step(*t, slope), lambda *t: _ref_linear_step(*t, slope),
                            [lam, lower, upper, w, bias], device, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES, ids=_ids(CONV_CASES))
@pytest.mark.parametrize("relax", [True, False])
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("slope", SLOPES)
def test_crown_conv2d_step(device, dtype, case, relax, shared, slope):
    n, b, cin, cout, h, w_, k, s, p, d = case
    (ho, wo), out_pad = conv_geometry(h, w_, k, s, p, d)
    g = gen(hash((case, relax, shared, slope)) % 2 ** 31)
    kk = 2
    lower, upper = rand_bounds(g, n, b, cout, ho, wo, slope=slope) if relax else (None, None)
    lam = rand_lam(g, 1 if shared else n, b, kk, cout, ho, wo)
    w, bias = randn(g, cout, cin, *k), (randn(g, cout) if n != 4 else None)

    def ref(lam, lower, upper, w, bias):
        term = None
        if lower is not None:
            lam, term = R.relu_backward(lam, lower, upper, slope)
        lam, t2 = R.conv2d_backward(lam, w, bias, s, p, d, out_pad)
        terms = [t for t in (term, t2) if t is not None]
        return lam, (sum(terms) if terms else torch.zeros(lam.shape[:3], dtype=lam.dtype))

    def cmp(lam, lower, upper, w, bias):
        return ops.crown_conv2d_step(lam, lower, upper, w, bias, list(s), list(p), list(d), list(out_pad), slope)

    check_against_reference(cmp, ref, [lam, lower, upper, w, bias], device, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", RELAX_CASES, ids=_ids(RELAX_CASES))
@pytest.mark.parametrize("relu_input", [False, True])
@pytest.mark.parametrize("shared", [True, False])
def test_concretize(device, dtype, case, relu_input, shared):
    n, b, k, s = case
    g = gen(hash((case, relu_input, shared)) % 2 ** 31)
    lower, upper = rand_bounds(g, n, b, *s)
    lam = rand_lam(g, 1 if shared else n, b, k, *s)
    check_against_reference(lambda a, l, u: ops.concretize(a, l, u, relu_input),
                            lambda a, l, u: R.concretize(a, l, u, relu_input),
                            [lam, lower, upper], device, dtype)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cin, k, s, p, d", [(1, (4, 4), (2, 2), (0, 0), (1, 1)),   # DM-small's input layer
                                             (3, (3, 3), (1, 1), (1, 1), (1, 1)),   # CIFAR's
                                             (4, (3, 2), (2, 1), (1, 0), (1, 2)),
                                             (1, (3, 3), (2, 2), (1, 1), (1, 1)),   # 1 channel, padded
                                             (2, (5, 3), (3, 2), (2, 1), (2, 1)),
                                             (5, (3, 3), (1, 1), (1, 1), (1, 1))])  # oneDNN's path
def test_crown_conv2d_step_into_few_channels_many_rows(cin, k, s, p, d, threads):
    """The CPU step back to a layer of few channels (its own GEMM + col2im) over many rows: the
    rows span several of its chunks and threads; values and gradients against the reference."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        n, b, cout, h, w_ = 3, 5, 6, 29, 28  # 169 to 812 positions: chunks of 2 to 24 rows
        (ho, wo), out_pad = conv_geometry(h, w_, k, s, p, d)
        g = gen(31 * cin + threads)
        lower, upper = rand_bounds(g, n, b, cout, ho, wo)
        lam = rand_lam(g, n, b, 4, cout, ho, wo)  # 60 rows
        w, bias = randn(g, cout, cin, *k), randn(g, cout)

        def ref(lam, lower, upper, w, bias):
            lam, term = R.relu_backward(lam, lower, upper)
            lam, t2 = R.conv2d_backward(lam, w, bias, s, p, d, out_pad)
            return lam, term + t2

        def cmp(lam, lower, upper, w, bias):
            return ops.crown_conv2d_step(lam, lower, upper, w, bias, list(s), list(p), list(d), list(out_pad))

        for dtype in DTYPES:
            check_against_reference(cmp, ref, [lam, lower, upper, w, bias], "cpu", dtype)
    finally:
        torch.set_num_threads(saved)


@pytest.mark.parametrize("layer", ["linear", "conv"])
def test_step_bias_gradient_without_the_weight_gradient(layer):
    """Only the bias asks for a gradient (a frozen weight): the kernel then sums g_bias * z without
    writing z; the result equals the reference's."""
    g = gen(5 if layer == "linear" else 6)
    if layer == "linear":
        lower, upper = rand_bounds(g, 3, 2, 7)
        lam, w, b = rand_lam(g, 3, 2, 4, 7), randn(g, 7, 5), randn(g, 7)
        step = lambda lam, lo, up, w, b: ops.crown_linear_step(lam, lo, up, w, b)  # noqa: E731
        affine = lambda lam, w, b: R.linear_backward(lam, w, b)  # noqa: E731
    else:
        (ho, wo), out_pad = conv_geometry(7, 6, (3, 3), (2, 1), (1, 0), (1, 1))
        lower, upper = rand_bounds(g, 3, 2, 4, ho, wo)
        lam, w, b = rand_lam(g, 3, 2, 4, 4, ho, wo), randn(g, 4, 3, 3, 3), randn(g, 4)
        step = lambda lam, lo, up, w, b: ops.crown_conv2d_step(lam, lo, up, w, b, [2, 1], [1, 0], [1, 1],  # noqa: E731
                                                               list(out_pad))
        affine = lambda lam, w, b: R.conv2d_backward(lam, w, b, (2, 1), (1, 0), (1, 1), out_pad)  # noqa: E731
    ref_bias = b.clone().requires_grad_()
    lam_r, t_relu = R.relu_backward(lam, lower, upper)
    lam_r, t_aff = affine(lam_r, w, ref_bias)
    probe = randn(g, *lam_r.shape)
    (want,) = torch.autograd.grad((lam_r * probe).sum() + (t_relu + t_aff).sum(), ref_bias)
    for dtype in DTYPES:
        bias = b.to(dtype).requires_grad_()
        lam_in, term = step(lam.to(dtype), lower.to(dtype), upper.to(dtype), w.to(dtype), bias)
        (got,) = torch.autograd.grad((lam_in * probe.to(dtype)).sum() + term.sum(), bias)
        assert_close(got, want, dtype, "bias gradient")


def test_channels_last_inputs_give_the_same_results():
    """Bounds and Lambda may arrive in either memory layout (the CPU kernels keep conv tensors channels-last)."""
    g = gen(7)
    lower, upper = rand_bounds(g, 3, 2, 4, 5, 6)
    lam = rand_lam(g, 3, 2, 2, 4, 5, 6)
    cl = lambda t: t.flatten(0, -4).contiguous(memory_format=torch.channels_last).view(t.shape)  # noqa: E731
    for fn in (lambda a, l, u: ops.relu_relax(a, l, u), lambda a, l, u: ops.concretize(a, l, u, True)):
        plain = fn(lam, lower, upper)
        for args in ((cl(lam), lower, upper), (lam, cl(lower), cl(upper)), (cl(lam), cl(lower), cl(upper))):
            mixed = fn(*args)
            for a, e in zip(mixed if isinstance(mixed, tuple) else (mixed,), plain if isinstance(plain, tuple) else (plain,)):
                torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- gradcheck and opcheck
@pytest.fixture
def one_thread():
    """gradcheck / opcheck make thousands of tiny calls: on a busy machine each OpenMP region of
    ATen's float64 convolutions can cost a scheduler time slice, so these run on one thread
    (the threaded kernels are covered by the larger cases above)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _small_samples(requires_grad: bool, device: str = "cpu"):
    """One small float64 call of every forward op on ``device``, for gradcheck / opcheck."""
    g = gen(123)
    rg = requires_grad

    def t(x):
        return x.detach().to(device).clone().requires_grad_(rg)

    l1, u1 = rand_bounds(g, 2, 2, 3)
    l1, u1 = l1 + 0.01, u1 + 0.02  # stay away from the kinks for finite differences
    l4, u4 = rand_bounds(g, 2, 1, 2, 4, 3)
    l4, u4 = l4 + 0.013, u4 + 0.021
    x = torch.rand(2, 2, 4, 3, generator=g, dtype=torch.float64) * 0.8 + 0.1
    xf = x.flatten(1)
    radii = 0.05 + 0.1 * torch.rand(2, 2, generator=g, dtype=torch.float64)
    w_lin, b_lin = randn(g, 4, 3), randn(g, 4)
    w_conv, b_conv = randn(g, 3, 2, 2, 2), randn(g, 3)
    w_in_lin = randn(g, 4, xf.shape[1])
    lam_lin = randn(g, 1, 2, 2, 3)
    (ho, wo), out_pad = conv_geometry(4, 3, (2, 2), (2, 1), (1, 0), (1, 1))
    l_co, u_co = rand_bounds(g, 2, 1, 3, ho, wo)
    l_co, u_co = l_co + 0.017, u_co + 0.023
    lam_co = randn(g, 2, 1, 2, 3, ho, wo)
    w_step = randn(g, 3, 2, 2, 2)
    zero = torch.tensor(0.0, dtype=torch.float64, device=device)
    one = torch.tensor(1.0, dtype=torch.float64, device=device)
    return {
        "interval_linear": (t(l1), t(u1), t(w_lin), t(b_lin), True),
        "interval_conv2d": (t(l4), t(u4), t(w_conv), t(b_conv), [2, 1], [1, 0], [1, 2], True),
        "interval_input_linear": (t(xf), t(radii), None, None, t(w_in_lin), t(b_lin)),
        "interval_input_conv2d": (t(x), t(radii), zero, one, t(w_conv), t(b_conv), [1, 1], [1, 1], [1, 1]),
        "relu_relax": (t(lam_lin), t(l1), t(u1)),
        "crown_linear_step": (t(randn(g, 1, 2, 2, 4)), t(rand_bounds(g, 2, 2, 4)[0] + 0.01),
                              None, t(w_lin), t(b_lin)),
        "crown_conv2d_step": (t(lam_co), t(l_co), t(u_co), t(w_step), t(b_conv), [2, 1], [1, 0], [1, 1],
                              list(out_pad)),
        "concretize": (t(lam_lin), t(l1), t(u1), True),
    }


LEAKY = 0.25  # the negative slope of the leaky variants (":leaky") of the relaxing ops


def _fix_linear_step(samples):
    # crown_linear_step needs both bounds or neither: give it a proper pair
    lam, lower, _, w, b = samples["crown_linear_step"]
    upper = (lower.detach() + 0.7).requires_grad_(lower.requires_grad)
    samples["crown_linear_step"] = (lam, lower, upper, w, b)
    for name in ("relu_relax", "crown_linear_step", "crown_conv2d_step"):  # the leaky ReLU relaxation
        samples[name + ":leaky"] = samples[name] + (LEAKY,)
    return samples


def _op(name: str):
    """The op of a sample name (``"relu_relax:leaky"``: relu_relax with a negative slope)."""
    return getattr(ops, name.split(":")[0])


FORWARD_OPS = ["interval_linear", "interval_conv2d", "interval_input_linear", "interval_input_conv2d", "relu_relax",
               "relu_relax:leaky", "crown_linear_step", "crown_linear_step:leaky", "crown_conv2d_step",
               "crown_conv2d_step:leaky", "concretize"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", FORWARD_OPS)
def test_gradcheck(name, device, one_thread):
    args = _fix_linear_step(_small_samples(True, device))[name]
    op = _op(name)

    def fn(*tensors):
        it = iter(tensors)
        full = [next(it) if isinstance(a, torch.Tensor) and a.requires_grad else a for a in args]
        return op(*full)

    inputs = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("name", FORWARD_OPS)
@pytest.mark.parametrize("requires_grad", [True, False])
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_forward_ops(name, requires_grad, device, one_thread):
    """Schema, fake kernel (sizes and strides: channels-last blocks on CPU, contiguous on CUDA),
    autograd registration and AOT dispatch, on each device's kernels."""
    args = _fix_linear_step(_small_samples(requires_grad, device))[name]
    torch.library.opcheck(_op(name).default, args)


def _backward_samples(device: str = "cpu"):
    """One call of every backward op on ``device`` (the arguments its forward's autograd formula passes)."""
    s = _fix_linear_step(_small_samples(False, device))
    g = gen(5)
    out = {}

    def rnd(*shape):
        return randn(g, *shape).to(device)

    lo, up, w, b, relu = s["interval_linear"]
    gl, gu = ops.interval_linear(lo, up, w, b, relu)
    out["interval_linear_backward"] = (rnd(*gl.shape), rnd(*gu.shape), lo, up, w, True, relu,
                                       [True, True, True, True])
    lo, up, w, b, st, pa, di, relu = s["interval_conv2d"]
    gl, _ = ops.interval_conv2d(lo, up, w, b, st, pa, di, relu)
    out["interval_conv2d_backward"] = (rnd(*gl.shape), rnd(*gl.shape), lo, up, w, True, st, pa, di,
                                       relu, [True, False, True, True])
    x, r, xmin, xmax, w, b = s["interval_input_linear"]
    gl, _ = ops.interval_input_linear(x, r, xmin, xmax, w, b)
    out["interval_input_linear_backward"] = (rnd(*gl.shape), rnd(*gl.shape), x, r, xmin, xmax, w, True,
                                             [True, True, False, False, True, True])
    x, r, xmin, xmax, w, b, st, pa, di = s["interval_input_conv2d"]
    gl, _ = ops.interval_input_conv2d(x, r, xmin, xmax, w, b, st, pa, di)
    out["interval_input_conv2d_backward"] = (rnd(*gl.shape), rnd(*gl.shape), x, r, xmin, xmax, w, True,
                                             st, pa, di, [True, True, True, True, True, False])
    lam, lo, up = s["relu_relax"]
    z, bias = ops.relu_relax(lam, lo, up)
    out["relu_relax_backward"] = (rnd(*z.shape), rnd(*bias.shape), lam, lo, up, [True, True, True])
    lam, lo, up, w, b = s["crown_linear_step"]
    li, bias = ops.crown_linear_step(lam, lo, up, w, b)
    out["crown_linear_step_backward"] = (rnd(*li.shape), rnd(*bias.shape), lam, lo, up, w, b,
                                         [True, True, True, True, True])
    lam, lo, up, w, b, st, pa, di, op_ = s["crown_conv2d_step"]
    li, bias = ops.crown_conv2d_step(lam, lo, up, w, b, st, pa, di, op_)
    out["crown_conv2d_step_backward"] = (rnd(*li.shape), rnd(*bias.shape), lam, lo, up, w, b, st, pa,
                                         di, op_, [True, False, True, True, True])
    for name in ("relu_relax_backward", "crown_linear_step_backward", "crown_conv2d_step_backward"):
        out[name + ":leaky"] = out[name] + (LEAKY,)
    lam, lo, up, relu = s["concretize"]
    res = ops.concretize(lam, lo, up, relu)
    out["concretize_backward"] = (rnd(*res.shape), lam, lo, up, relu, [True, True, False])
    return out


@pytest.mark.parametrize("name", ["interval_linear_backward", "interval_conv2d_backward",
                                  "interval_input_linear_backward", "interval_input_conv2d_backward",
                                  "relu_relax_backward", "crown_linear_step_backward",
                                  "crown_conv2d_step_backward", "concretize_backward", "relu_relax_backward:leaky",
                                  "crown_linear_step_backward:leaky", "crown_conv2d_step_backward:leaky"])
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_backward_ops(name, device, one_thread):
    """The backward ops' schemas and fake kernels (the gradients' strides) on each device."""
    torch.library.opcheck(_op(name).default, _backward_samples(device)[name],
                          test_utils=("test_schema", "test_faketensor"))


# ----------------------------------------------------------------------------- argument checks
def test_bad_arguments_raise_clear_errors():
    g = gen(1)
    lower, upper = rand_bounds(g, 2, 3, 4)
    w = randn(g, 5, 4)
    with pytest.raises(RuntimeError, match="dtype mismatch"):
        ops.interval_linear(lower, upper, w.float(), None, False)
    with pytest.raises(RuntimeError, match="does not take 3 input features"):
        ops.interval_linear(lower[..., :3], upper[..., :3], w, None, False)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        ops.concretize(torch.ones(1, 3, 2, 4, dtype=torch.float16), lower.half(), upper.half(), False)
    with pytest.raises(RuntimeError, match="radius axis must be 1 or N"):
        ops.relu_relax(torch.ones(3, 3, 2, 4, dtype=torch.float64), lower, upper)
    with pytest.raises(RuntimeError, match="give both lower and upper"):
        ops.crown_linear_step(torch.ones(1, 3, 2, 5, dtype=torch.float64), lower, None, w.t().contiguous(), None)
    lam = torch.ones(1, 3, 2, 4, dtype=torch.float64)
    for slope in (-0.1, 1.5, float("nan")):
        with pytest.raises(RuntimeError, match=r"negative_slope must be in \[0, 1\]"):
            ops.relu_relax(lam, lower, upper, slope)
        with pytest.raises(RuntimeError, match=r"negative_slope must be in \[0, 1\]"):
            ops.crown_linear_step(lam, lower, upper, w.t().contiguous(), None, slope)
        with pytest.raises(ValueError, match=r"negative_slope must be in \[0, 1\]"):
            R.relu_backward(lam, lower, upper, slope)

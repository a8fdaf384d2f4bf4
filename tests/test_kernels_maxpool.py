"""The compiled max-pooling CROWN step (torch.ops.gmbound.max_pool2d_relax) against the reference.

Its oracle is ``gmbound.reference.primitives.max_pool2d_relax``: values and the gradients w.r.t.
Lambda and both lines (slope, intercept) in float64 and float32, on windows chosen by the
reference's relaxation of random bounds (kernel = stride, overlapping, padded, dilated) and on
random indices that collide (several windows on one entry); Lambda shared by the radii (M = 1) or
not; plain and channels-last Lambda (CPU); gradcheck; opcheck of the op and its backward; clear
errors for bad arguments. Tolerances and helpers as in test_kernels.py.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gmbound.reference import primitives as R
from backends import DEVICES, needs_extension
from test_kernels import DTYPES, check_against_reference, gen, one_thread, ops, rand_lam  # noqa: F401  (one_thread: a fixture)

pytestmark = needs_extension

# (N, B, K, C, H, W, kernel, stride, padding, dilation)
POOL_CASES = [
    (1, 1, 1, 1, 4, 4, (2, 2), (2, 2), (0, 0), (1, 1)),
    (3, 2, 4, 3, 8, 8, (2, 2), (2, 2), (0, 0), (1, 1)),     # the usual 2 x 2 pooling
    (4, 2, 3, 5, 7, 6, (3, 3), (1, 2), (1, 1), (1, 1)),     # overlapping, padded
    (2, 3, 2, 2, 9, 9, (3, 2), (2, 1), (0, 1), (2, 1)),     # dilated
    (16, 2, 5, 8, 12, 12, (2, 2), (2, 2), (0, 0), (1, 1)),  # enough rows for several threads
]


def _ids(cases):
    return [f"case{i}" for i in range(len(cases))]


def pool_bounds(g, n, b, c, h, w):
    """Bounds with ties and with windows both dominated (stable) and not."""
    lower = torch.randn(n, b, c, h, w, generator=g, dtype=torch.float64)
    width = torch.rand(n, b, c, h, w, generator=g, dtype=torch.float64) * torch.rand(1, generator=g).item() * 3
    return lower, lower + width


def window_lines(g, case):
    """Lambda and the reference's lines (index, slope, intercept) of one case's windows."""
    n, b, k, c, h, w, kern, s, p, d = case
    lower, upper = pool_bounds(g, n, b, c, h, w)
    oh, ow = F.max_pool2d(lower[0], kern, s, p, d).shape[-2:]
    index, slope, bias = R.max_pool2d_relaxation(lower, upper, kern, s, p, d, (oh, ow))
    return index, slope.detach(), bias.detach(), (h, w), (oh, ow)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOL_CASES, ids=_ids(POOL_CASES))
@pytest.mark.parametrize("shared", [True, False])
def test_max_pool2d_relax_on_real_windows(device, dtype, case, shared):
    g = gen(hash((case, shared)) % 2 ** 31)
    index, slope, bias, in_hw, (oh, ow) = window_lines(g, case)
    n, b, k, c = case[:4]
    assert 0 < slope.sum() < slope.numel() or slope.numel() < 8, "want stable and unstable windows"
    lam = rand_lam(g, 1 if shared else n, b, k, c, oh, ow)
    index_d = index.to(device)
    check_against_reference(lambda lam, s, t: ops.max_pool2d_relax(lam, index_d, s, t, list(in_hw)),
                            lambda lam, s, t: R.max_pool2d_relax(lam, index, s, t, in_hw),
                            [lam, slope, bias], device, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shared", [True, False])
def test_colliding_windows_add_up(device, dtype, shared):
    """Random indices (many windows on one entry, any slope in [0, 1]): the scatter sums them."""
    g = gen(7 + shared)
    n, b, k, c, oh, ow, h, w = 3, 2, 4, 3, 5, 4, 3, 3
    index = torch.randint(0, h * w, (n, b, c, oh, ow), generator=g)
    slope = torch.rand(n, b, c, oh, ow, generator=g, dtype=torch.float64)
    bias = torch.randn(n, b, c, oh, ow, generator=g, dtype=torch.float64)
    lam = rand_lam(g, 1 if shared else n, b, k, c, oh, ow)
    index_d = index.to(device)
    check_against_reference(lambda lam, s, t: ops.max_pool2d_relax(lam, index_d, s, t, [h, w]),
                            lambda lam, s, t: R.max_pool2d_relax(lam, index, s, t, (h, w)),
                            [lam, slope, bias], device, dtype)


def test_channels_last_lambda_gives_the_same_result_in_its_layout():
    g = gen(11)
    case = POOL_CASES[2]
    index, slope, bias, in_hw, (oh, ow) = window_lines(g, case)
    n, b, k, c = case[:4]
    lam = rand_lam(g, n, b, k, c, oh, ow)
    lam_cl = lam.flatten(0, 2).contiguous(memory_format=torch.channels_last).view(lam.shape)
    plain = ops.max_pool2d_relax(lam, index, slope, bias, list(in_hw))
    cl = ops.max_pool2d_relax(lam_cl, index, slope, bias, list(in_hw))
    assert cl[0].flatten(0, 2).is_contiguous(memory_format=torch.channels_last)  # stays in the CPU layout
    for a, e in zip(cl, plain):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


def _sample(device, requires_grad):
    g = gen(3)
    index, slope, bias, in_hw, (oh, ow) = window_lines(g, POOL_CASES[2])
    n, b, k, c = POOL_CASES[2][:4]
    lam = torch.randn(n, b, 2, c, oh, ow, generator=g, dtype=torch.float64)  # no exact zeros (kinks) for gradcheck

    def t(x):
        return x.detach().to(device).clone().requires_grad_(requires_grad)

    return t(lam), index.to(device), t(slope), t(bias), list(in_hw)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck(device, one_thread):
    lam, index, slope, bias, in_hw = _sample(device, True)
    assert torch.autograd.gradcheck(lambda lam, s, t: ops.max_pool2d_relax(lam, index, s, t, in_hw),
                                    (lam, slope, bias), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("requires_grad", [True, False])
def test_opcheck(device, requires_grad, one_thread):
    torch.library.opcheck(ops.max_pool2d_relax.default, _sample(device, requires_grad))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_backward(device, one_thread):
    lam, index, slope, bias, in_hw = _sample(device, False)
    lam_in, term = ops.max_pool2d_relax(lam, index, slope, bias, in_hw)
    g = gen(4)
    args = (torch.randn(lam_in.shape, generator=g, dtype=torch.float64).to(device),
            torch.randn(term.shape, generator=g, dtype=torch.float64).to(device),
            lam, index, slope, bias, in_hw, [True, False, True])
    torch.library.opcheck(ops.max_pool2d_relax_backward.default, args, test_utils=("test_schema", "test_faketensor"))


def test_bad_arguments_raise_clear_errors():
    lam, index, slope, bias, in_hw = _sample("cpu", False)
    with pytest.raises(RuntimeError, match=r"index must lie in \[0, 42\)"):
        ops.max_pool2d_relax(lam, index + 42, slope, bias, in_hw)
    with pytest.raises(RuntimeError, match=r"index must lie in"):
        ops.max_pool2d_relax(lam, index - 100, slope, bias, in_hw)
    with pytest.raises(RuntimeError, match="index must be int64"):
        ops.max_pool2d_relax(lam, index.int(), slope, bias, in_hw)
    with pytest.raises(RuntimeError, match="dtype mismatch"):
        ops.max_pool2d_relax(lam, index, slope.float(), bias, in_hw)
    with pytest.raises(RuntimeError, match=r"must be \[N, B, C, H', W'\] alike"):
        ops.max_pool2d_relax(lam, index, slope[..., :1], bias, in_hw)
    with pytest.raises(RuntimeError, match=r"lam must be \[1 or N, B, K, C, H', W'\]"):
        ops.max_pool2d_relax(lam[..., :1], index, slope, bias, in_hw)
    with pytest.raises(RuntimeError, match="in_hw must be 2 positive sizes"):
        ops.max_pool2d_relax(lam, index, slope, bias, [0, 7])

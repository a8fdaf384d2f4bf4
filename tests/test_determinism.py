"""Determinism: the compiled kernels give the same bits from run to run and whatever the thread count,
and honour ``torch.use_deterministic_algorithms(True)``.

A margin near 0 must not flip between two runs of the same certificate. The kernels reduce in a
fixed order (CPU: one thread per row, partial sums added in task order; CUDA: fixed block trees and
a second in-order pass, no atomics), in double on both devices.
"""
from __future__ import annotations

import pytest
import torch

import gmbound
from nets import make_case
from backends import DEVICES, needs_extension

pytestmark = needs_extension


@pytest.fixture
def deterministic(monkeypatch):
    """torch.use_deterministic_algorithms(True), as a user who needs reproducible certificates sets it
    (cuBLAS then needs a fixed workspace configuration)."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before)


@pytest.fixture
def threads():
    saved = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(saved)


def test_bias_gradient_does_not_depend_on_the_thread_count(threads):
    """The CROWN step's bias gradient sums over every (radius, sample, row): its partial sums used to
    be added in whichever order the threads finished, so 1 and 2 threads gave different bits."""
    ops = torch.ops.gmbound
    g = torch.Generator().manual_seed(3)
    n, b, k, d_out, d_in = 4, 64, 9, 100, 7
    lam = torch.randn(1, b, k, d_out, generator=g, dtype=torch.float64)
    lower = torch.randn(n, b, d_out, generator=g, dtype=torch.float64)
    upper = lower + torch.rand(n, b, d_out, generator=g, dtype=torch.float64)
    w = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    bias = torch.randn(d_out, generator=g, dtype=torch.float64)
    g_in = torch.randn(n, b, k, d_in, generator=g, dtype=torch.float64)
    g_bias = torch.randn(n, b, k, generator=g, dtype=torch.float64)
    results = []
    for t in (1, 2, 1, 2):
        threads(t)
        results.append(ops.crown_linear_step_backward(g_in, g_bias, lam, lower, upper, w, bias,
                                                      [True, True, True, True, True]))
    for other in results[1:]:
        for i, (a, e) in enumerate(zip(other, results[0])):
            if i == 3:  # the weight gradient is ATen's mm: MKL splits its sums by thread count on some CPUs
                torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
            else:       # Lambda, bounds and bias gradients: our kernels' fixed-order sums
                assert torch.equal(a, e), f"output {i} depends on the thread count"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["ibp", "crown-ibp"])
def test_bounds_and_gradients_repeat_bit_for_bit(device, method, deterministic):
    """Under torch.use_deterministic_algorithms(True) the compiled path runs (nothing refuses) and two
    runs of a GM training step give the same loss, margins and gradients, bit for bit."""
    model, x, y = make_case("cnn", seed=4, batch=6)
    model, x, y = model.to(device).float(), x.to(device).float(), y.to(device)
    net = gmbound.BoundedSequential(model)
    runs = []
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        out = gmbound.gm_loss(net, x, y, 0.1, n_radii=4, kappa=0.0, method=method, x_min=0.0, x_max=1.0,
                              backend=device)
        out.loss.backward()
        runs.append([out.loss.detach(), out.verified_error] + [p.grad.clone() for p in model.parameters()])
    for a, e in zip(runs[1], runs[0]):
        assert torch.equal(a, e)

"""Largest certified radius by bisection: exact on linear models, always a real certificate."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import gmbound
from gmbound.certify import certify, certify_batch, write_certify


def linear_case(seed=0, n=24, d=12, k=4):
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, k)).double()
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(k, d, generator=g, dtype=torch.float64))
        model[1].bias.copy_(torch.randn(k, generator=g, dtype=torch.float64))
    x = torch.rand(n, d, generator=g, dtype=torch.float64)
    y = model(x).argmax(1)
    y[0] = (y[0] + 1) % k  # one misclassified sample
    w, b = model[1].weight, model[1].bias
    diff = w[y][:, None, :] - w[None, :, :]
    margin = (diff * x[:, None, :]).sum(-1) + (b[y][:, None] - b[None, :])
    ratio = margin / diff.abs().sum(-1)
    ratio[torch.arange(n), y] = float("inf")
    return model, x, y, ratio.min(1).values


def test_linear_model_radius_is_exact_to_the_resolution():
    model, x, y, exact = linear_case()
    net = gmbound.BoundedSequential(model)
    eps_max, rounds, k = 2.0, 5, 6
    r = certify_batch(net, x, y, "ibp", eps_max, rounds=rounds, k=k, x_min=None, x_max=None)
    resolution = eps_max / (k + 1) ** rounds
    assert r[0] == -1  # misclassified
    for i in range(1, len(y)):
        if exact[i] >= eps_max:
            assert r[i] == eps_max
        else:  # IBP with the specification folded in is exact for an affine net
            assert exact[i] - resolution <= r[i] < exact[i]


@pytest.mark.parametrize("verifier", ["ibp", "crown-ibp", "crown"])
def test_radius_is_a_real_certificate(verifier):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 8), nn.ReLU(),
                          nn.Linear(8, 3)).double()
    x = torch.rand(30, 1, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    net = gmbound.BoundedSequential(model)
    eps_max, rounds, k = 0.5, 3, 4
    r = certify_batch(net, x, y, verifier, eps_max, rounds=rounds, k=k)
    assert (r >= 0).all()
    spec = gmbound.margin_spec(y, 3, dtype=x.dtype)
    lb = net.bounds(x, r.unsqueeze(0), spec, method=verifier, bound_upper=False, x_min=0.0, x_max=1.0).lower
    assert (lb[0] > 0).all()  # certified at the reported radius, per sample
    if verifier == "ibp":  # IBP is monotone in the radius: the next grid point up fails
        step = eps_max / (k + 1) ** rounds
        above = (r + 2 * step).clamp(max=eps_max)
        lb = net.bounds(x, above.unsqueeze(0), spec, method="ibp", bound_upper=False, x_min=0.0, x_max=1.0).lower
        assert not (lb[0] > 0).all(-1)[r < eps_max - 2 * step].any()


def test_certify_curve_and_files(tmp_path):
    model, x, y, exact = linear_case(seed=3)
    loader = DataLoader(TensorDataset(x, y), batch_size=10)
    res = certify(model, loader, verifiers=["ibp", "crown-ibp"], eps_max=1.0, rounds=3, k=4, x_min=None,
                  x_max=None, dtype=torch.float64)
    assert len(res.radii["best"]) == len(y)
    assert res.radii["best"] == [max(a, b) for a, b in zip(res.radii["ibp"], res.radii["crown-ibp"])]
    curve = res.curve("best", [0.0, 0.1, 0.5, 1.0])
    assert curve == sorted(curve, reverse=True)
    assert curve[0] == pytest.approx(sum(res.correct) / len(y))
    paths = write_certify(res, tmp_path, "certify", "linear")
    summary = json.loads(paths["json"].read_text())
    assert summary["n_samples"] == len(y) and summary["resolution"] == pytest.approx(1.0 / 125)
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    assert len(paths["samples"].read_text().splitlines()) == len(y) + 1

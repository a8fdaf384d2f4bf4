"""Bad or unusual API input gets a result or a clear BoundInputError (issue 9, item 9)."""
import numpy as np
import pytest
import torch
from torch import nn

import gmbound
from gmbound.compat import BoundedModule, BoundedTensor, PerturbationLpNorm

BACKENDS = ["reference", "auto"]


def _net():
    torch.manual_seed(0)  # two ReLU layers, so full CROWN really back-substitutes in chunks
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                         nn.Linear(8, 3)).double().eval()


def _xy(batch=3):
    g = torch.Generator().manual_seed(1)
    return torch.rand(batch, 6, generator=g, dtype=torch.float64), torch.arange(batch) % 3


# ----------------------------------------------------------------------------- B = 0
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["ibp", "crown-ibp", "crown"])
def test_empty_batch_gives_empty_bounds_on_every_backend(backend, method):
    bnet = gmbound.BoundedSequential(_net())
    x, y = _xy(0)
    b = bnet.bounds(x, [0.1, 0.2], method=method, backend=backend)
    assert b.lower.shape == b.upper.shape == (2, 0, 3)
    spec = gmbound.margin_spec(y, 3, dtype=torch.float64)
    b = bnet.bounds(x, 0.1, spec, method=method, backend=backend, bound_upper=False)
    assert b.lower.shape == (1, 0, 2) and b.upper is None
    assert bnet.margin_bounds(x, y, [0.1, 0.2], method="ibp" if method == "ibp" else "crown-ibp",
                              backend=backend).shape == (2, 0, 2)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_empty_batch_gm_loss_is_refused(eps):
    x, y = _xy(0)
    with pytest.raises(gmbound.BoundInputError, match=r"empty batch \(B = 0\)"):
        gmbound.gm_loss(_net(), x, y, eps, n_radii=2)


def test_empty_batch_in_compat():
    x, y = _xy(0)
    model = BoundedModule(_net(), x)
    for ptb in (PerturbationLpNorm(0.1), PerturbationLpNorm(0.1, x_L=x - 0.1, x_U=x + 0.1)):
        lb, ub = model.compute_bounds(x=(BoundedTensor(x, ptb),), method="CROWN")
        assert lb.shape == ub.shape == (0, 3)
        lb, ub = model.gm_bounds(x=(BoundedTensor(x, ptb),), n_radii=2, method="CROWN-IBP")
        assert lb.shape == (2, 0, 3)
    with pytest.raises(gmbound.BoundInputError, match="empty batch"):
        model.gm_loss(BoundedTensor(x, PerturbationLpNorm(0.1)), y, n_radii=2)


# ----------------------------------------------------------------------------- eps and counts
@pytest.mark.parametrize("eps", [np.float32(0.1), np.float64(0.1), np.array(0.1), np.array([0.1]), np.int64(0)])
def test_numpy_eps_works_like_a_python_number(eps):
    bnet = gmbound.BoundedSequential(_net())
    x, y = _xy()
    want = bnet.bounds(x, float(np.asarray(eps).reshape(-1)[0]), method="crown-ibp")
    got = bnet.bounds(x, eps, method="crown-ibp")
    torch.testing.assert_close(got.lower, want.lower)
    torch.testing.assert_close(got.upper, want.upper)
    r = gmbound.gm_loss(_net(), x, y, np.float32(0.1), n_radii=np.int64(2))
    assert r.radii.shape == (2,)


def test_eps_of_the_wrong_kind_is_named():
    x, _ = _xy()
    with pytest.raises(gmbound.BoundInputError, match="eps must be a number"):
        gmbound.BoundedSequential(_net()).bounds(x, "0.1")


@pytest.mark.parametrize("n_radii, match", [(2.5, "whole number"), (2.0, "whole number"), (True, "whole number"),
                                            (0, "at least 1"), ("3", "whole number")])
def test_n_radii_must_be_a_whole_number(n_radii, match):
    x, y = _xy()
    with pytest.raises(gmbound.BoundInputError, match=f"n_radii must be .*{match}"):
        gmbound.gm_loss(_net(), x, y, 0.1, n_radii=n_radii)
    with pytest.raises(gmbound.BoundInputError, match="n_radii"):
        gmbound.gm_radii(0.1, n_radii)
    with pytest.raises(gmbound.BoundInputError, match="n_radii"):
        gmbound.radius_weights(n_radii)


@pytest.mark.parametrize("chunk", [0, -3, 2.5])
def test_crown_chunk_must_be_a_positive_whole_number(chunk):
    x, _ = _xy()
    with pytest.raises(gmbound.BoundInputError, match="crown_chunk must be a positive int"):
        gmbound.BoundedSequential(_net()).bounds(x, 0.1, method="crown", crown_chunk=chunk)


def test_a_small_crown_chunk_gives_the_same_bounds():
    bnet, (x, _) = gmbound.BoundedSequential(_net()), _xy()
    torch.testing.assert_close(bnet.bounds(x, 0.1, method="crown", crown_chunk=1).lower,
                               bnet.bounds(x, 0.1, method="crown").lower)


# ----------------------------------------------------------------------------- domain, labels, BatchNorm
@pytest.mark.parametrize("name", ["x_min", "x_max"])
def test_domain_limits_that_would_enlarge_x_are_refused(name):
    x, _ = _xy()
    limit = torch.zeros(2, 3, 6, dtype=torch.float64) if name == "x_min" else torch.ones(2, 3, 6, dtype=torch.float64)
    for backend in BACKENDS:
        with pytest.raises(gmbound.BoundInputError, match=rf"{name} of shape \(2, 3, 6\) would enlarge x"):
            gmbound.BoundedSequential(_net()).bounds(x, 0.1, backend=backend, **{name: limit})


def test_gm_loss_at_zero_eps_checks_the_labels_and_the_domain():
    x, _ = _xy()
    with pytest.raises(gmbound.BoundInputError, match=r"labels must lie in \[0, 3\)"):
        gmbound.gm_loss(_net(), x, torch.tensor([0, 1, 7]), 0.0)
    with pytest.raises(gmbound.BoundInputError, match=r"y must have shape \[B=3\]"):
        gmbound.gm_loss(_net(), x, torch.tensor([0, 1]), 0.0)
    with pytest.raises(gmbound.BoundInputError, match="x lies above x_max"):
        gmbound.gm_loss(_net(), x + 2, torch.tensor([0, 1, 2]), 0.0, x_min=0.0, x_max=1.0)


def _bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3)).double().train()


def test_train_mode_batchnorm_with_one_sample_raises_in_bounds_as_in_gm_loss():
    x, y = _xy(1)
    net = _bn_net()
    match = r"BatchNorm1d at index 1: BatchNorm in training mode needs more than one value per channel"
    with pytest.raises(gmbound.BoundInputError, match=match):
        gmbound.BoundedSequential(net).bounds(x, 0.1)
    with pytest.raises(gmbound.BoundInputError, match=match):
        gmbound.BoundedSequential(net).margin_bounds(x, y, 0.1)
    with pytest.raises(gmbound.BoundInputError, match=match):
        gmbound.gm_loss(net, x, y, 0.1)
    net.eval()  # running statistics: one sample is fine
    assert gmbound.BoundedSequential(net).bounds(x, 0.1).lower.shape == (1, 1, 3)


# ----------------------------------------------------------------------------- compat boxes
def test_compat_inverted_box_raises():
    x, _ = _xy()
    model = BoundedModule(_net(), x)
    ptb = PerturbationLpNorm(0.1, x_L=x + 0.05, x_U=x - 0.05)
    with pytest.raises(gmbound.BoundInputError, match="x_L exceeds x_U by up to 0.1"):
        model.compute_bounds(x=(BoundedTensor(x, ptb),), method="IBP")
    lower = x - 0.1
    lower[0, 0] = x[0, 0] + 0.2  # empty in one coordinate only
    with pytest.raises(gmbound.BoundInputError, match="x_L exceeds x_U"):
        model.compute_bounds(x=(BoundedTensor(x, PerturbationLpNorm(0.1, x_L=lower, x_U=x + 0.1)),), method="IBP")

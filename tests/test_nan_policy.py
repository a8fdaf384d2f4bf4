"""NaN is never a certificate (issue 9, item 1): one NaN weight, and nothing is reported verified."""
import math
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import gmbound
from gmbound.certify import certify
from gmbound.evaluate import evaluate


def _nan_model():
    """A small classifier with a single NaN weight in its first layer (every logit becomes NaN)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        net[1].weight[0, 0] = float("nan")
    return net.eval()


def _data(n=12):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 6, generator=g)
    y = torch.arange(n) % 3  # every class, so argmax-of-NaN (index 0) would "get" a third of them right
    return x, y


def test_verified_mask_fails_nan_and_ties():
    m = torch.tensor([[0.5, 1.0], [0.5, float("nan")], [0.0, 1.0], [-1.0, 2.0]])
    assert gmbound.verified_mask(m).tolist() == [True, False, False, False]
    assert gmbound.verified_mask(m.unsqueeze(0)).shape == (1, 4)


@pytest.mark.parametrize("stochastic", [False, True])
@pytest.mark.parametrize("method", ["ibp", "crown-ibp"])
def test_gm_loss_never_verifies_a_nan_model(method, stochastic):
    x, y = _data()
    r = gmbound.gm_loss(_nan_model(), x, y, 0.1, n_radii=3, method=method, stochastic=stochastic,
                        generator=torch.Generator().manual_seed(0))
    drawn = [v for v in r.verified_error.tolist() if not math.isnan(v)]
    assert drawn and all(v == 1.0 for v in drawn), r.verified_error
    assert float(r.natural_error) == 1.0
    assert not bool(torch.isfinite(r.loss))


def test_gm_loss_at_zero_eps_never_verifies_a_nan_model():
    x, y = _data()
    r = gmbound.gm_loss(_nan_model(), x, y, 0.0, n_radii=3)
    assert r.verified_error.tolist() == [1.0, 1.0, 1.0]
    assert float(r.natural_error) == 1.0


def test_gm_loss_at_zero_eps_counts_a_tie_as_unverified():
    net = nn.Sequential(nn.Linear(6, 3))
    nn.init.zeros_(net[0].weight)
    nn.init.zeros_(net[0].bias)  # all logits equal: argmax "predicts" class 0, but no margin is > 0
    x, y = _data()
    r = gmbound.gm_loss(net, x, y, 0.0, n_radii=2)
    assert r.verified_error.tolist() == [1.0, 1.0]


def test_eval_never_verifies_a_nan_model_and_warns():
    x, y = _data()
    loader = DataLoader(TensorDataset(x, y), batch_size=5)
    with pytest.warns(RuntimeWarning, match=r"NaN or inf logits on 12 of 12 samples"):
        res = evaluate(_nan_model(), loader, [0.0, 0.05], verifiers=["ibp", "crown-ibp", "crown"], pgd_steps=0)
    assert res.standard_error == 1.0
    assert all(v == 1.0 for errs in res.verified_error.values() for v in errs)
    assert res.verified_error_any == [1.0, 1.0]
    assert res.meta["nonfinite_logits"] == 12


def test_certify_never_certifies_a_nan_model_and_warns():
    x, y = _data()
    loader = DataLoader(TensorDataset(x, y), batch_size=6)
    with pytest.warns(RuntimeWarning, match=r"NaN or inf logits on 12 of 12 samples"):
        res = certify(_nan_model(), loader, verifiers=("ibp", "crown-ibp"), eps_max=0.1, rounds=1, k=2)
    assert not any(res.correct)
    assert all(r == -1.0 for rad in res.radii.values() for r in rad)


def test_finite_models_do_not_warn():
    x, y = _data()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    loader = DataLoader(TensorDataset(x, y), batch_size=6)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        evaluate(net, loader, [0.0], verifiers=["ibp"], pgd_steps=0)
        certify(net, loader, verifiers=("ibp",), eps_max=0.1, rounds=1, k=2)


def test_compat_never_verifies_a_nan_model():
    from gmbound.compat import BoundedModule, BoundedTensor, PerturbationLpNorm

    x, y = _data()
    model = BoundedModule(_nan_model(), x)
    xb = BoundedTensor(x, PerturbationLpNorm(0.1))
    r = model.gm_loss(xb, y, n_radii=2)
    assert r.verified_error.tolist() == [1.0, 1.0]
    spec = gmbound.margin_spec(y, 3)
    lb, _ = model.compute_bounds(x=(xb,), C=spec, method="CROWN-IBP", bound_upper=False)
    assert not bool(gmbound.verified_mask(lb).any())


@pytest.mark.parametrize("verifier", ["ibp", "crown-ibp"])
def test_training_heldout_check_counts_a_nan_model_wrong_and_unverified(verifier):
    """The per-epoch held-out check of the trainer: NaN logits are neither correct nor verified."""
    from gmbound.train import heldout_errors
    x, y = _data()
    loader = DataLoader(TensorDataset(x, y), batch_size=5)
    err, verr = heldout_errors(gmbound.BoundedSequential(_nan_model()), loader, 0.01, verifier, torch.device("cpu"),
                               0.0, 1.0)
    assert (err, verr) == (1.0, 1.0)

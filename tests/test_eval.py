"""Evaluation over an eps grid: numbers equal a direct computation, PGD never beats a certificate,
unsound bounds are flagged, outputs are written."""
from __future__ import annotations

import csv
import json

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import gmbound
import gmbound.evaluate as ev
from gmbound.config import make_config
from gmbound.evaluate import (UnsoundBoundError, evaluate, evaluate_checkpoint, format_table, load_result,
                              relu_neurons, write_result)
from gmbound.plots import plot_drawdown
from gmbound.train import train

from nets import self_labelled_conv

GRID = [0.0, 0.002, 0.005, 0.01, 0.02, 0.05]


def small_case(seed=0, n=48):
    """A small conv net and inputs labelled by the net itself, except a few flipped labels."""
    model, x, y = self_labelled_conv(seed, n, n_flipped=5)
    return model, DataLoader(TensorDataset(x, y), batch_size=20)


def direct(model, loader, verifier):
    """Verified error per radius, one radius and one batch at a time, straight from the public API."""
    net = gmbound.BoundedSequential(model)
    errs = []
    for e in GRID:
        bad = total = 0
        for x, y in loader:
            if verifier == "crown":
                spec = gmbound.margin_spec(y, 4, dtype=x.dtype)
                lb = net.bounds(x, [e], spec, method="crown", x_min=0.0, x_max=1.0, bound_upper=False).lower
            else:
                lb = net.margin_bounds(x, y, [e], method=verifier, x_min=0.0, x_max=1.0)
            bad += int((~(lb[0] > 0).all(-1)).sum())
            total += len(y)
        errs.append(bad / total)
    return errs


def test_numbers_equal_direct_computation():
    model, loader = small_case()
    res = evaluate(model, loader, GRID, verifiers=["ibp", "crown-ibp", "crown"], pgd_steps=10,
                   dtype=torch.float64, radii_chunk=4, crown_max_neurons=None, exhaustive=True)
    assert res.eps == GRID and res.n_samples == 48 and res.radius_search["mode"] == "exhaustive"
    with torch.no_grad():
        std = sum(int((model(x).argmax(1) != y).sum()) for x, y in loader) / 48
    assert res.standard_error == std
    for v in ("ibp", "crown-ibp", "crown"):
        assert res.verified_error[v] == direct(model, loader, v), v
    assert res.verified_error["ibp"][0] == pytest.approx(std)
    # "any" is never worse than the best single verifier, and at least the clean error
    for i in range(len(GRID)):
        assert res.verified_error_any[i] <= min(errs[i] for errs in res.verified_error.values())
        assert res.verified_error_any[i] >= std
        assert res.best_verifier[i]
    # the grid is interesting: certification degrades along it
    assert res.verified_error_any[0] < res.verified_error_any[-1]


def test_pgd_never_beats_a_certificate():
    model, loader = small_case(seed=1)
    res = evaluate(model, loader, GRID + [0.1, 0.2], verifiers=["ibp", "crown-ibp"], pgd_steps=20, pgd_restarts=2,
                   dtype=torch.float64)
    assert res.sound
    for v, errs in res.verified_error.items():
        for e, pgd, ver in zip(res.eps, res.pgd_error, errs):
            assert pgd <= ver, (v, e)
    assert res.pgd_error == sorted(res.pgd_error)          # monotone in eps
    assert res.pgd_error[0] == res.standard_error
    assert res.pgd_error[-1] > res.standard_error           # the attack does something


def test_trained_checkpoint_is_sound_and_matches_the_model(tmp_path):
    cfg = make_config(overrides=["model.name=mlp", "model.hidden=[32]", "data.train_subset=256",
                                 "data.test_subset=64", "train.batch_size=64", "train.epochs=2", "train.eps=0.05",
                                 "train.n_radii=3", "train.progress=false", "train.tensorboard=false",
                                 f"out_dir={tmp_path / 'run'}"])
    run = train(cfg, quiet=True)
    ecfg = dict(cfg["eval"], eps_grid="0:0.04:0.01", pgd_steps=10)
    res = evaluate_checkpoint(run.checkpoint, ecfg)
    assert res.sound and res.n_samples == 64
    assert res.meta["method"] == "gm-crown-ibp" and res.meta["epochs"] == 2 and res.meta["train_eps"] == 0.05
    again = evaluate(run.model, ev.eval_loader_for(cfg, 64, 256), res.eps, verifiers=["ibp", "crown-ibp"],
                     pgd_steps=10)
    assert again.verified_error == res.verified_error and again.standard_error == res.standard_error


def test_unsound_bounds_are_flagged(monkeypatch):
    model, loader = small_case()

    def everything_certified(net, x, y, radii, verifier, **kw):
        return torch.ones(radii.shape[0], x.shape[0], dtype=torch.bool)

    monkeypatch.setattr(ev, "certified", everything_certified)
    with pytest.raises(UnsoundBoundError, match="UNSOUND"):
        evaluate(model, loader, GRID, verifiers=["ibp"], pgd_steps=5, dtype=torch.float64)
    res = evaluate(model, loader, GRID, verifiers=["ibp"], pgd_steps=5, dtype=torch.float64, strict=False)
    assert not res.sound
    assert res.unsound["ibp"][0] == 5  # the five mislabelled samples, "certified" at eps = 0
    assert res.rows()[0]["unsound_samples"] == 5


def test_full_crown_is_skipped_for_large_nets():
    model, loader = small_case()
    assert relu_neurons(model, (1, 7, 7)) == 4 * 3 * 3 + 16
    res = evaluate(model, loader, [0.0, 0.01], verifiers=["ibp", "crown"], pgd_steps=0, crown_max_neurons=10)
    assert "crown" in res.skipped_verifiers and "crown_max_neurons" in res.skipped_verifiers["crown"]
    assert list(res.verified_error) == ["ibp"]
    with pytest.raises(ValueError, match="verifier"):
        evaluate(model, loader, [0.0], verifiers=["deeppoly"])


def test_outputs_written_and_plotted(tmp_path):
    model, loader = small_case()
    res = evaluate(model, loader, GRID, verifiers=["ibp", "crown-ibp"], pgd_steps=5)
    res.meta["label"] = "small"
    csv_path, json_path = write_result(res, tmp_path, "eval_small")
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(GRID)
    for col in ("eps", "standard_error", "verified_error_ibp", "verified_error_crown-ibp", "verified_error",
                "best_verifier", "pgd_error", "unsound_samples"):
        assert col in rows[0]
    data = load_result(json_path)
    assert data["verified_error"]["ibp"] == res.verified_error["ibp"] and data["sound"] is True
    png = plot_drawdown([data, dict(data, meta={"label": "copy"})], tmp_path / "fig.png", title="t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "verified(ibp)" in format_table(res)
    (tmp_path / "bad.json").write_text(json.dumps({"eps": [0.1]}))
    with pytest.raises(ValueError, match="not a gmbound eval JSON"):
        load_result(tmp_path / "bad.json")


def test_pgd_runs_only_on_its_own_grid_with_the_chosen_loss(tmp_path):
    model, loader = small_case()
    full = evaluate(model, loader, GRID, verifiers=["ibp"], pgd_steps=10, dtype=torch.float64, seed=3)
    coarse = evaluate(model, loader, GRID, verifiers=["ibp"], pgd_steps=10, dtype=torch.float64, seed=3,
                      pgd_eps_grid=[0.0, 0.01, 0.05], pgd_loss="margin")
    assert coarse.verified_error == full.verified_error          # PGD settings leave verification alone
    attacked = [i for i, p in enumerate(coarse.pgd_error) if p == p]
    assert attacked == [0, 3, 5]                                  # NaN where no attack ran
    assert coarse.pgd["loss"] == "margin" and coarse.pgd["eps"] == [0.0, 0.01, 0.05]
    assert coarse.to_dict()["pgd_error"][1] is None               # null in JSON, not NaN
    assert "-" in format_table(coarse).splitlines()[2]
    assert plot_drawdown([coarse.to_dict()], tmp_path / "d.png").stat().st_size > 0
    with pytest.raises(ValueError, match="not on the verification grid"):
        evaluate(model, loader, GRID, verifiers=["ibp"], pgd_steps=1, pgd_eps_grid=[0.03])


def test_pgd_config_keys_are_validated():
    cfg = make_config(None, ["eval.pgd_loss=margin", "eval.eps_grid=0:0.5:0.01", "eval.pgd_eps_grid=0:0.5:0.05"])
    assert cfg["eval"]["pgd_loss"] == "margin"
    from gmbound.config import ConfigError

    with pytest.raises(ConfigError, match="pgd_loss"):
        make_config(None, ["eval.pgd_loss=hinge"])
    with pytest.raises(ConfigError, match="pgd_eps_grid"):
        make_config(None, ["eval.eps_grid=0:0.5:0.1", "eval.pgd_eps_grid=0.05"])

"""Training: short real runs of every method, schedules, logs, checkpoints and exact resumption."""
from __future__ import annotations

import csv
import math

import pytest
import torch

import gmbound.train as train_mod
from gmbound.checkpoint import load_checkpoint, load_model
from gmbound.config import ConfigError, make_config
from gmbound.schedules import CrownIBPSchedule
from gmbound.train import train

TINY = ["model.name=mlp", "model.hidden=[32, 16]", "data.train_subset=192", "data.test_subset=64",
        "train.batch_size=64", "train.n_radii=3", "train.progress=false", "train.tensorboard=false",
        "train.eps=0.1", "train.warmup_epochs=1", "train.ramp_epochs=1"]


def tiny_cfg(tmp_path, *extra, name="run"):
    return make_config(overrides=TINY + [f"out_dir={tmp_path / name}", *extra])


def read_log(folder):
    with open(folder / "log.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("method, extra", [
    ("natural", []), ("ibp", []), ("crown-ibp", []), ("gm-ibp", []), ("gm-crown-ibp", []),
    ("gm-crown-ibp", ["train.stochastic=true", "train.weights=uniform"]),
])
def test_every_method_trains(tmp_path, method, extra):
    cfg = tiny_cfg(tmp_path, f"train.method={method}", "train.epochs=3", *extra)
    before = [p.detach().clone() for p in train_mod.build_run_model(cfg).parameters()]
    res = train(cfg, quiet=True)
    assert res.epochs_done == 3 and not res.stopped_early
    rows = read_log(res.out_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    for r in rows:
        assert math.isfinite(float(r["train_loss"]))
        assert 0 <= float(r["test_verified_error"]) <= 1
    after = list(res.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after))
    ckpt = torch.load(res.checkpoint, weights_only=True)  # loadable without unpickling code
    assert ckpt["epoch"] == 3 and ckpt["step"] == 9 and ckpt["config"]["train"]["method"] == method
    if method == "natural":
        assert float(rows[-1]["eps"]) == 0.0
    else:  # warm-up epoch, then the 1-epoch ramp, then eps_train
        assert float(rows[0]["eps"]) == 0.0 and float(rows[2]["eps"]) == pytest.approx(0.1)
        assert float(rows[2]["kappa"]) == pytest.approx(0.5) and float(rows[2]["beta"]) == pytest.approx(0.0)


def test_schedule_values_are_per_batch(tmp_path, monkeypatch):
    seen = []
    real = train_mod.train_step

    def spy(net, opt, x, y, values, *a, **k):
        seen.append(values)
        return real(net, opt, x, y, values, *a, **k)

    monkeypatch.setattr(train_mod, "train_step", spy)
    cfg = tiny_cfg(tmp_path, "train.epochs=3", "train.ramp=smooth", "train.ramp_epochs=2",
                   "train.kappa_end=0.2", "train.beta_end=0.4")
    train(cfg, quiet=True)
    sched = CrownIBPSchedule(0.1, 3, 6, kappa_end=0.2, beta_end=0.4, ramp="smooth")
    assert len(seen) == 9
    for step, v in enumerate(seen):
        assert v == sched(step)
    assert len({v.eps for v in seen[3:9]}) == 6  # changes every batch inside the ramp


def test_lr_decay_and_clipping(tmp_path, monkeypatch):
    norms = []
    real = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *a, **k):
        params = list(params)
        out = real(params, max_norm, *a, **k)
        norms.append(float(torch.sqrt(sum((p.grad ** 2).sum() for p in params))))
        return out

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    cfg = tiny_cfg(tmp_path, "train.epochs=3", "train.lr=0.01", "train.lr_milestones=[1, 2]",
                   "train.lr_gamma=0.5", "train.grad_clip=0.05")
    res = train(cfg, quiet=True)
    assert [float(r["lr"]) for r in read_log(res.out_dir)] == pytest.approx([0.01, 0.005, 0.0025])
    assert len(norms) == 9 and max(norms) <= 0.05 * (1 + 1e-4)


def _weights(path):
    return load_checkpoint(path)["model"]


RESUME_CASES = {
    "gm-crown-ibp": ["train.method=gm-crown-ibp"],
    "stochastic": ["train.method=gm-crown-ibp", "train.stochastic=true", "train.lr_milestones=[2]",
                   "train.grad_clip=1.0"],
}


@pytest.mark.parametrize("case", sorted(RESUME_CASES))
def test_resume_after_stop_is_bitwise_identical(tmp_path, case):
    extra = RESUME_CASES[case] + ["train.epochs=4", "train.ramp_epochs=2"]
    full = train(tiny_cfg(tmp_path, *extra, name="full"), quiet=True)
    part_cfg = tiny_cfg(tmp_path, *extra, name="part")
    first = train(part_cfg, stop_after_epoch=2, quiet=True)
    assert first.stopped_early and first.epochs_done == 2
    assert load_checkpoint(first.checkpoint)["epoch"] == 2
    second = train(part_cfg, resume=True, quiet=True)
    assert second.epochs_done == 4
    a, b = _weights(full.checkpoint), _weights(second.checkpoint)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    fa, fb = load_checkpoint(full.checkpoint), load_checkpoint(second.checkpoint)
    assert fa["optimizer"]["state"][0]["exp_avg"].equal(fb["optimizer"]["state"][0]["exp_avg"])
    rows_a, rows_b = read_log(full.out_dir), read_log(second.out_dir)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in rows]  # noqa: E731
    assert strip(rows_a) == strip(rows_b)


def test_resume_after_kill_mid_epoch(tmp_path, monkeypatch):
    """A crash in the middle of epoch 2 loses that epoch only; resuming replays it exactly."""
    extra = ["train.epochs=3", "train.method=gm-ibp"]
    full = train(tiny_cfg(tmp_path, *extra, name="full"), quiet=True)
    cfg = tiny_cfg(tmp_path, *extra, name="killed")
    real, calls = train_mod.train_step, {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:  # epoch 2, second batch (3 batches per epoch)
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(train_mod, "train_step", dying)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, quiet=True)
    monkeypatch.setattr(train_mod, "train_step", real)
    assert load_checkpoint(cfg["out_dir"])["epoch"] == 1
    assert len(read_log(tmp_path / "killed")) == 1
    resumed = train(cfg, resume=True, quiet=True)
    a, b = _weights(full.checkpoint), _weights(resumed.checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_changed_config_and_existing_runs(tmp_path):
    cfg = tiny_cfg(tmp_path, "train.epochs=2")
    train(cfg, stop_after_epoch=1, quiet=True)
    changed = tiny_cfg(tmp_path, "train.epochs=2", "train.lr=0.1")
    with pytest.raises(ConfigError, match="train.lr"):
        train(changed, resume=True, quiet=True)
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, quiet=True)
    longer = tiny_cfg(tmp_path, "train.epochs=3")  # more epochs is allowed
    assert train(longer, resume=True, quiet=True).epochs_done == 3


def test_checkpoint_contents_and_model_rebuild(tmp_path):
    res = train(tiny_cfg(tmp_path, "train.epochs=1", "model.normalize=true"), quiet=True)
    ckpt = torch.load(res.checkpoint, weights_only=True)
    for key in ("model", "optimizer", "scheduler", "rng", "config", "epoch", "step", "model_info", "history"):
        assert key in ckpt
    for key in ("torch", "numpy", "python", "loader"):
        assert key in ckpt["rng"]
    assert isinstance(ckpt["config"], dict)
    model, _ = load_model(res.out_dir)
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(model(x), res.model.eval()(x))
    assert type(model[0]).__name__ == "Normalize"
    assert not list(res.out_dir.glob("*.tmp")) and not list(res.out_dir.glob(".*.tmp"))


def test_bad_checkpoint_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a gmbound checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt"):
        load_checkpoint(tmp_path / "garbage.pt")


def test_stochastic_train_verified_error_is_the_drawn_radius_fraction():
    """Stochastic GRT logs the fraction of samples not certified at their own drawn radius."""
    from gmbound.losses import GMLossResult
    from gmbound.train import batch_verified_error, verified_error_kind

    err = torch.tensor([0.0, 0.5, 1.0])
    index = torch.tensor([0, 0, 0, 2])  # three samples at r_1 (all verified), one at r_3 (not)
    z = torch.zeros(())
    stochastic = GMLossResult(z, z, z, z, err, z, z, z, drawn_index=index)
    assert batch_verified_error(stochastic) == pytest.approx(0.25)
    exact = GMLossResult(z, z, z, z, err, z, z, z)
    assert batch_verified_error(exact) == pytest.approx(1.0)
    base = {"method": "gm-crown-ibp", "n_radii": 10, "stochastic": True}
    assert verified_error_kind(base) == "drawn radius"
    assert verified_error_kind({**base, "stochastic": False}) == "eps"
    assert verified_error_kind({**base, "method": "crown-ibp"}) == "eps"


def test_fractional_warmup_and_ramp_epochs_round_to_whole_batches():
    from gmbound.train import make_schedule

    cfg = make_config(None, ["train.warmup_epochs=0.5", "train.ramp_epochs=2.5", "train.eps=0.4"])
    schedule = make_schedule(cfg["train"], steps_per_epoch=10)
    assert (schedule.warmup_steps, schedule.ramp_steps) == (5, 25)
    assert schedule(4).eps == 0.0 and schedule(5 + 25).eps == pytest.approx(0.4)
    assert 0.0 < schedule(17).eps < 0.4


def test_a_residual_zoo_model_trains_and_reloads(tmp_path):
    """The trainer, checkpoint and evaluation accept ResNet-20 (a traced plain nn.Module, not a Sequential)."""
    from gmbound.evaluate import evaluate

    cfg = make_config(overrides=TINY[2:] + ["model.name=resnet20", "data.train_subset=32", "data.test_subset=16",
                                            "train.batch_size=16", "train.n_radii=2", "train.warmup_epochs=0",
                                            "train.ramp_epochs=0", "train.method=gm-crown-ibp", "train.epochs=1",
                                            f"out_dir={tmp_path / 'res'}"])
    res = train(cfg, quiet=True)
    rows = read_log(res.out_dir)
    assert math.isfinite(float(rows[0]["train_loss"])) and 0 <= float(rows[0]["test_verified_error"]) <= 1
    model, _ = load_model(res.out_dir)
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(model(x), res.model.eval()(x))
    data = torch.utils.data.TensorDataset(x, torch.randint(0, 10, (4,)))
    out = evaluate(model, torch.utils.data.DataLoader(data, batch_size=4), [0.0, 0.01], verifiers=("ibp", "crown-ibp"),
                   pgd_steps=2, pgd_restarts=1, progress=False)
    assert out.sound

"""Training under faults: divergence stops the run before anything of the bad epoch is written, the
log never runs ahead of the checkpoint, kill leftovers are cleaned up, NaN is never verified."""
from __future__ import annotations

import csv
import os

import pytest
import torch
from torch import nn

import gmbound.train as train_mod
from gmbound.bounded import BoundedSequential
from gmbound.checkpoint import load_checkpoint
from gmbound.cli import main
from gmbound.config import make_config
from gmbound.train import TrainingDivergedError, heldout_errors, train

TINY = ["model.name=mlp", "model.hidden=[16]", "data.train_subset=128", "data.test_subset=32",
        "train.batch_size=64", "train.n_radii=2", "train.progress=false", "train.tensorboard=false",
        "train.eps=0.05", "train.warmup_epochs=0", "train.ramp_epochs=1", "train.method=gm-ibp"]


def tiny_cfg(tmp_path, *extra, name="run"):
    return make_config(overrides=TINY + [f"out_dir={tmp_path / name}", *extra])


def log_epochs(folder):
    with open(folder / "log.csv") as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


def test_huge_lr_stops_without_writing_a_checkpoint(tmp_path):
    """Before: lr=1e30 wrote a NaN checkpoint every epoch, logged verified error 0.0 and exited 0."""
    cfg = tiny_cfg(tmp_path, "train.lr=1e30", "train.epochs=3")
    with pytest.raises(TrainingDivergedError, match=r"non-finite .*epoch 1.*no checkpoint was written.*train\.lr"):
        train(cfg, quiet=True)
    folder = tmp_path / "run"
    assert not (folder / "checkpoint.pt").exists()
    assert log_epochs(folder) == []


def test_huge_lr_through_the_cli_exits_1_with_one_line(tmp_path, capsys):
    folder = tmp_path / "cli"
    args = ["train"] + [f"--config={_write_config(tmp_path)}"] + [f"out_dir={folder}", "train.lr=1e30",
                                                                  "train.epochs=2"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("gmbound train: error: training diverged") and len(err.splitlines()) == 1
    assert not (folder / "checkpoint.pt").exists()


def _write_config(tmp_path):
    import yaml

    from gmbound.config import parse_override

    cfg: dict = {}
    for text in TINY:
        key, value = parse_override(text)
        node = cfg
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("where", ["loss", "weights"])
def test_nan_in_epoch_2_keeps_the_epoch_1_checkpoint(tmp_path, monkeypatch, where):
    cfg = tiny_cfg(tmp_path, "train.epochs=3")
    real, calls = train_mod.train_step, {"n": 0}

    def faulty(net, *a, **k):
        calls["n"] += 1
        result = real(net, *a, **k)
        if calls["n"] == 4:  # epoch 2, second (last) batch
            if where == "weights":  # the step itself wrote a NaN weight; the loss was still finite
                with torch.no_grad():
                    next(net.model.parameters()).view(-1)[0] = float("nan")
            else:
                result.loss = result.loss * float("nan")
        return result

    monkeypatch.setattr(train_mod, "train_step", faulty)
    with pytest.raises(TrainingDivergedError, match=rf"non-finite {where}.*epoch 2.*checkpoint of epoch 1"):
        train(cfg, quiet=True)
    folder = tmp_path / "run"
    saved = load_checkpoint(folder)
    assert saved["epoch"] == 1 and all(bool(torch.isfinite(t).all()) for t in saved["model"].values())
    assert log_epochs(folder) == [1]


def test_log_row_is_written_after_its_checkpoint(tmp_path, monkeypatch):
    """A kill while epoch 2's checkpoint is written: before, log.csv already held epoch 2's row."""
    cfg = tiny_cfg(tmp_path, "train.epochs=3")
    real, calls = train_mod.atomic_save, {"n": 0}

    def dying(obj, path):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # as a SIGINT / kill in the middle of the write
        return real(obj, path)

    monkeypatch.setattr(train_mod, "atomic_save", dying)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, quiet=True)
    folder = tmp_path / "run"
    assert load_checkpoint(folder)["epoch"] == 1 and log_epochs(folder) == [1]
    monkeypatch.setattr(train_mod, "atomic_save", real)
    assert train(cfg, resume=True, quiet=True).epochs_done == 3 and log_epochs(folder) == [1, 2, 3]


def test_stale_temporaries_are_removed_and_checkpoints_respect_the_umask(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    stale = [folder / ".checkpoint.pt.k1ll3d.tmp", folder / ".checkpoint_epoch1.pt.x.tmp"]
    for p in stale:
        p.write_bytes(b"partial")
    keep = folder / "notes.tmp"
    keep.write_text("mine")
    old = os.umask(0o022)
    try:
        train(tiny_cfg(tmp_path, "train.epochs=1"), quiet=True)
    finally:
        os.umask(old)
    assert not any(p.exists() for p in stale) and keep.exists()
    assert (folder / "checkpoint.pt").stat().st_mode & 0o777 == 0o644  # was 0600 (mkstemp's mode)


def test_heldout_errors_never_count_nan_as_verified():
    """Before: margins of NaN passed `(m <= 0).any()` as verified, so a NaN model had error 0."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        model[3].weight[0, 0] = float("nan")
    x, y = torch.rand(10, 1, 2, 2), torch.randint(0, 3, (10,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    _, verified_error = heldout_errors(BoundedSequential(model), loader, 0.01, "ibp", torch.device("cpu"), 0.0, 1.0)
    assert verified_error == 1.0

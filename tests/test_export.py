"""Weights-only export: smaller than the checkpoint, loadable by load_model, same outputs."""
from __future__ import annotations

import pytest
import torch

from gmbound.checkpoint import CheckpointError, load_checkpoint, load_model
from gmbound.config import make_config
from gmbound.export import main
from gmbound.train import train


def test_export_keeps_the_model_and_drops_the_training_state(tmp_path):
    cfg = make_config(None, ["train.epochs=1", "train.method=ibp", "data.train_subset=64", "data.test_subset=32",
                             "train.batch_size=32", "train.progress=false", "train.tensorboard=false",
                             f"out_dir={tmp_path / 'run'}"])
    result = train(cfg, quiet=True)
    out = tmp_path / "model.pt"
    assert main([str(result.checkpoint), str(out)]) == 0
    model, slim = load_model(out)
    ref, full = load_model(result.checkpoint)
    assert "optimizer" not in slim and "rng" not in slim and "optimizer" in full
    assert out.stat().st_size < result.checkpoint.stat().st_size
    x = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)
    assert slim["epoch"] == 1 and load_checkpoint(out)["config"] == full["config"]
    assert main([str(tmp_path / "missing.pt"), str(out)]) == 2
    # the weights-only file carries its own content digest: a changed weight is caught on load
    raw = torch.load(out, weights_only=True)
    assert "sha256" in raw
    raw["model"]["0.weight"].view(-1)[0] += 1.0
    torch.save(raw, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match="edited.pt.*corrupt"):
        load_model(tmp_path / "edited.pt")

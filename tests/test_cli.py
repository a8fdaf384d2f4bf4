"""The ``gmbound`` command end to end: train, resume, eval, certify, plot, demo, and its error messages."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml

import gmbound.cli as cli
from gmbound.cli import main

TINY = {"name": "tiny", "data": {"name": "embedded-mnist", "train_subset": 128, "test_subset": 48},
        "model": {"name": "mlp", "hidden": [24]},
        "train": {"method": "gm-crown-ibp", "epochs": 2, "batch_size": 64, "eps": 0.05, "n_radii": 3,
                  "warmup_epochs": 0, "ramp_epochs": 1, "progress": False, "tensorboard": False},
        "eval": {"eps_grid": "0:0.04:0.02", "pgd_steps": 5, "verifiers": ["ibp", "crown-ibp"]}}


@pytest.fixture
def config_file(tmp_path):
    p = tmp_path / "tiny.yaml"
    data = dict(TINY, out_dir=str(tmp_path / "run"))
    p.write_text(yaml.safe_dump(data))
    return p


def test_train_stop_resume_eval_certify_plot(tmp_path, config_file, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", str(config_file), "--stop-after-epoch", "1"]) == 0
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 1
    # "--resume key=value": the word after --resume is an override, not a path
    assert main(["train", "--config", str(config_file), "--resume", "train.epochs=3"]) == 0
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 3
    assert main(["train", "--resume", str(run), "train.epochs=4"]) == 0  # config from the checkpoint
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 4
    out = capsys.readouterr().out
    assert "resuming" in out and "finished epoch 4/4" in out

    ev = tmp_path / "ev"
    assert main(["eval", "--checkpoint", str(run / "checkpoint.pt"), str(run / "checkpoint.pt"),
                 "--eps-grid", "0:0.04:0.01", "--verifiers", "ibp,crown-ibp,crown", "--pgd-steps", "5",
                 "--label", "a", "b", "--out", str(ev), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "verified(crown)" in out and "PGD" in out
    data = json.loads((ev / "eval_run.json").read_text())
    assert data["eps"] == pytest.approx([0, 0.01, 0.02, 0.03, 0.04])
    assert set(data["verified_error"]) == {"ibp", "crown-ibp", "crown"} and data["sound"]
    assert data["meta"]["label"] == "a" and (ev / "eval_run_2.json").is_file()
    assert (ev / "drawdown.png").read_bytes()[:4] == b"\x89PNG"

    assert main(["plot", str(ev / "eval_run.json"), str(ev / "eval_run_2.json"), "-o", str(tmp_path / "f.png"),
                 "--per-verifier"]) == 0
    assert (tmp_path / "f.png").is_file()

    cert = tmp_path / "cert"
    assert main(["certify", "--checkpoint", str(run / "checkpoint.pt"), "--eps-max", "0.1", "--rounds", "2",
                 "--k", "3", "--out", str(cert)]) == 0
    for name in ("certify.json", "certify.png", "certify_curve.csv", "certify_radii.csv"):
        assert (cert / name).is_file()


def test_errors_are_clear_and_exit_2(tmp_path, config_file, capsys):
    assert main(["train", "--config", str(config_file), "train.methd=ibp"]) == 2
    err = capsys.readouterr().err
    assert "train.methd" in err and "train.method" in err
    assert main(["train", "--config", str(config_file), "train.method=pgd"]) == 2
    assert "train.method" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    assert main(["train", "--config", str(config_file), "data.name=mnist", f"data.dir={tmp_path / 'nodata'}"]) == 2
    assert "nodata" in capsys.readouterr().err
    assert main(["train"]) == 2
    assert main(["eval", "--checkpoint", str(tmp_path / "nope.pt")]) == 2
    assert "nope.pt" in capsys.readouterr().err


def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "gmbound", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for cmd in ("train", "eval", "certify", "plot", "demo"):
        assert cmd in out.stdout


def test_demo_runs_with_a_tiny_budget(tmp_path, monkeypatch, capsys):
    tiny = {"name": "demo", "data": {"name": "embedded-mnist", "train_subset": 128, "test_subset": 32},
            "model": {"name": "mlp", "hidden": [16]},
            "train": {"epochs": 1, "batch_size": 64, "eps": 0.05, "n_radii": 2, "progress": False,
                      "tensorboard": False},
            "eval": {"eps_grid": "0:0.1:0.05", "pgd_steps": 3}}
    monkeypatch.setattr(cli, "DEMO_CONFIG", tiny)
    out = cli.run_demo(tmp_path / "demo", compare=True)
    assert set(cli.run_demo(tmp_path / "d2", compare="auto", budget_s=0.0, quiet=True)["results"]) == {"gm-crown-ibp"}
    assert set(out["results"]) == {"gm-crown-ibp", "crown-ibp"}
    text = capsys.readouterr().out
    assert "demo finished" in text and "verified(crown-ibp)" in text
    assert (tmp_path / "demo" / "drawdown.png").is_file()

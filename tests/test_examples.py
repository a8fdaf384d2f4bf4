"""The example scripts run end to end (a few steps each, in a subprocess, as a user runs them)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "1", "--steps", "4", "--warmup", "1", "--ramp", "2", "--test-size", "40", "--log-every", "1",
        "--batch-size", "16"]


def run_example(name, *args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / name), *TINY, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_lirpa_style_trainer_runs(model):
    out = run_example("train_lirpa_style.py", "--model", model)
    steps = [line for line in out.splitlines() if line.startswith("epoch 1 step")]
    assert len(steps) == 4 and all("loss" in s and "verified_err" in s for s in steps)
    assert "eps 0.100  beta 0.00" in steps[-1]          # the ramp ran to the end, through CROWN-IBP
    assert "test (40 images) at eps 0.1: clean error" in out


def test_lirpa_style_gm_trainer_runs():
    out = run_example("train_lirpa_style_gm.py", "--n-radii", "3")
    steps = [line for line in out.splitlines() if line.startswith("epoch 1 step")]
    assert len(steps) == 4 and all("loss" in s and "verified_err" in s for s in steps)
    assert "test (40 images) at eps 0.1: clean error" in out
    assert "verified error (IBP or CROWN-IBP) by radius: 0.025:" in out


def test_the_plain_script_uses_only_auto_lirpa_names():
    code = [line for line in (ROOT / "examples" / "train_lirpa_style.py").read_text().splitlines()
            if line.startswith(("import ", "from "))]
    gmbound_imports = [line for line in code if "gmbound" in line]
    assert gmbound_imports == [
        "from gmbound.compat import BoundedModule, BoundedTensor                 # gmbound",
        "from gmbound.compat.perturbations import PerturbationLpNorm             # gmbound",
        "from gmbound.data import load_dataset",
    ]
    assert "gm_" not in (ROOT / "examples" / "train_lirpa_style.py").read_text()
    assert "model.gm_loss(" in (ROOT / "examples" / "train_lirpa_style_gm.py").read_text()


def run_script(name, *args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / name), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.parametrize("mode", [[], ["--no_loss_fusion"], ["--bound_type", "IBP"]])
def test_lirpa_fusion_trainer_runs(mode):
    """auto_LiRPA's cifar_training.py calls: loss fusion, BoundDataParallel, max_input, final_node_name."""
    out = run_script("train_lirpa_fusion.py", "--steps", "3", "--log_every", "1", "--test_size", "64",
                     "--batch_size", "32", *mode)
    steps = [line for line in out.splitlines() if "]: eps=" in line]
    assert len(steps) == 5 and all("Robust_CE=" in s and "Loss=" in s for s in steps)  # 3 steps, epoch, test
    assert ("K margin rows" if mode == ["--no_loss_fusion"] else "loss fusion: one row") in out
    assert "Verified_Err=" in steps[-1]          # the evaluation bounds the logits (final_node_name)

"""The run-folder lock: a second run into a live run's folder is refused, naming the holder; a killed
holder never blocks; stale checkpoint temporaries are removed only by the lock holder."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from gmbound.cli import main
from gmbound.runlock import LOCK_NAME, RunLock, RunLockedError

REPO = Path(__file__).resolve().parents[1]
TINY = {"name": "tiny", "data": {"name": "embedded-mnist", "train_subset": 64, "test_subset": 16},
        "model": {"name": "mlp", "hidden": [8]},
        "train": {"method": "ibp", "epochs": 1, "batch_size": 32, "eps": 0.05, "progress": False,
                  "tensorboard": False, "test_every": 0}}

HOLDER = """
import sys, time
from gmbound.runlock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def _holder(folder: Path) -> subprocess.Popen:
    """Another process holding the folder's lock, as a live `gmbound train` does."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _config(tmp_path: Path, folder: Path) -> Path:
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(dict(TINY, out_dir=str(folder))))
    return p


def test_second_run_is_refused_and_a_killed_holder_does_not_block(tmp_path, capsys):
    folder = tmp_path / "run"
    config = _config(tmp_path, folder)
    stale = folder / ".checkpoint.pt.abc123.tmp"
    holder = _holder(folder)
    try:
        stale.write_bytes(b"half a checkpoint")  # could be the live run's own write in progress
        assert main(["train", "--config", str(config)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        assert f"pid {holder.pid}" in err and str(folder) in err and "in use" in err
        assert stale.exists()                        # not ours to delete while another run holds the folder
        assert not (folder / "log.csv").exists() and not (folder / "checkpoint.pt").exists()
    finally:
        holder.send_signal(signal.SIGKILL)           # as a kill -9 of a training run
        holder.wait()
    assert (folder / LOCK_NAME).exists()             # the dead holder's file stays ...
    assert main(["train", "--config", str(config)]) == 0  # ... and does not block: flock died with it
    assert not stale.exists()                        # the new holder cleaned up the kill's temporary
    assert (folder / "checkpoint.pt").is_file()


def test_lock_in_process(tmp_path):
    with RunLock(tmp_path / "a") as lock:
        assert lock.held
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
            RunLock(tmp_path / "a").acquire()  # a second open file description conflicts, even in-process
    with RunLock(tmp_path / "a"):              # released on exit
        pass


def test_two_real_train_processes(tmp_path):
    """Two `gmbound train` processes into one folder: the second exits 2 naming the first, which keeps
    the folder to itself (killed afterwards, as a long run might be: its log and checkpoint agree)."""
    from gmbound.checkpoint import load_checkpoint

    folder = tmp_path / "run"
    config = _config(tmp_path, folder)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "gmbound", "train", "--config", str(config), "train.epochs=100000"]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and first.poll() is None and not (folder / "checkpoint.pt").is_file():
            time.sleep(0.05)
        assert first.poll() is None, first.stderr.read()
        second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert first.poll() is None  # still running: the refusal was not "after the fact"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert second.returncode == 2
    err = second.stderr.strip()
    assert f"pid {first.pid}" in err and "Traceback" not in err and len(err.splitlines()) == 1
    epochs = [int(r.split(",")[0]) for r in (folder / "log.csv").read_text().splitlines()[1:]]
    saved = load_checkpoint(folder)["epoch"]
    assert epochs == list(range(1, len(epochs) + 1))  # one run's rows only
    assert saved - 1 <= len(epochs) <= saved          # the row follows its checkpoint, never precedes it

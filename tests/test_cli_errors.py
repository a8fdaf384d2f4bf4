"""Bad input to the ``gmbound`` command: exit status 2 and one line saying what is wrong, never a
traceback. One row per case of issue 9, run in-process through ``main(argv)``."""
from __future__ import annotations

import gzip
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from gmbound.cli import main
from gmbound.config import make_config
from gmbound.train import train

try:
    from gmbound.checkpoint import with_digest
except ImportError:  # older gmbound (no digest): the crafted files are then plain dicts
    def with_digest(payload):
        return payload

TINY = {"name": "tiny", "data": {"name": "embedded-mnist", "train_subset": 64, "test_subset": 16},
        "model": {"name": "mlp", "hidden": [8]},
        "train": {"method": "ibp", "epochs": 1, "batch_size": 32, "eps": 0.05, "progress": False,
                  "tensorboard": False, "test_every": 0},
        "eval": {"eps_grid": "0:0.04:0.02", "pgd_steps": 2}}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A trained tiny checkpoint, its config file, a plain file to put outputs under, a scratch folder."""
    root = tmp_path_factory.mktemp("cli_errors")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(dict(TINY, out_dir=str(root / "run"))))
    run = train(make_config(config), quiet=True)
    blocker = root / "a_file"
    blocker.write_text("I am a file, not a folder")
    return {"root": root, "config": config, "ckpt": run.checkpoint, "blocker": blocker}


# ----------------------------------------------------------------------------- bad data files
def _write_idx(path: Path, array: np.ndarray) -> None:
    payload = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


def _mnist(root: Path, damage: str) -> Path:
    """An MNIST folder (6 images per split) with one kind of damage; returns data.dir."""
    raw = root / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (6, 28, 28), dtype=np.uint8))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", np.arange(6, dtype=np.uint8))
    images = raw / "train-images-idx3-ubyte.gz"
    if damage == "gz-truncated":
        images.write_bytes(images.read_bytes()[:300])
    elif damage == "gz-bitflip":
        data = bytearray(images.read_bytes())
        data[len(data) // 2] ^= 0x04
        images.write_bytes(bytes(data))
    elif damage == "idx-short":  # plain (not gzipped) IDX file whose payload is cut
        images.unlink()
        _write_idx(raw / "train-images-idx3-ubyte", rng.integers(0, 256, (6, 28, 28), dtype=np.uint8))
        plain = raw / "train-images-idx3-ubyte"
        plain.write_bytes(plain.read_bytes()[:-100])
    elif damage == "count-mismatch":
        _write_idx(raw / "train-labels-idx1-ubyte.gz", np.arange(5, dtype=np.uint8))
    elif damage == "label-range":
        _write_idx(raw / "train-labels-idx1-ubyte.gz", np.array([0, 1, 2, 3, 4, 12], np.uint8))
    return root / "data"


DATA_CASES = {
    "gz-truncated": "train-images-idx3-ubyte.gz: corrupt or truncated gzip",
    "gz-bitflip": "train-images-idx3-ubyte.gz: corrupt or truncated gzip",
    "idx-short": "train-images-idx3-ubyte: IDX header says shape",
    "count-mismatch": "holds 6 images but",
    "label-range": "train-labels-idx1-ubyte.gz: 1 label(s) outside 0..9",
}


# ----------------------------------------------------------------------------- bad checkpoints
def _checkpoint(env, tmp_path: Path, kind: str) -> Path:
    good = env["ckpt"]
    path = tmp_path / f"{kind}.pt"
    ckpt = torch.load(good, weights_only=True)
    if kind == "random":
        path.write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[:2000])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "foreign":
        torch.save({"state_dict": {"w": torch.ones(2)}}, path)
    elif kind == "future":
        torch.save(with_digest({**ckpt, "version": 99}), path)
    elif kind == "wrong-model":
        torch.save(with_digest({**ckpt, "model_info": {**ckpt["model_info"], "hidden": [9]}}), path)
    elif kind == "bit-flipped":  # 256 bytes of a weight tensor's storage
        data = bytearray(good.read_bytes())
        at = bytes(data).find(ckpt["model"]["1.weight"].numpy().tobytes()[:32])
        for i in range(at, at + 256):
            data[i] ^= 0xA5
        path.write_bytes(bytes(data))
    return path


CHECKPOINT_CASES = {"random": "not a readable", "truncated": "not a readable", "empty": "empty",
                    "foreign": "not a gmbound checkpoint", "future": "newer than this gmbound",
                    "wrong-model": "do not belong to the model", "bit-flipped": "corrupt"}


# ----------------------------------------------------------------------------- the table
def _cases():
    """(id, argv(env, tmp_path), expected fragment of the one-line message)."""
    c = []
    for damage, msg in DATA_CASES.items():
        c.append((f"data-{damage}", lambda e, t, d=damage: [
            "train", "--config", str(e["config"]), "data.name=mnist", f"data.dir={_mnist(t, d)}",
            f"out_dir={t / 'run'}"], msg))
    for kind, msg in CHECKPOINT_CASES.items():
        c.append((f"eval-ckpt-{kind}", lambda e, t, k=kind: ["eval", "--checkpoint", str(_checkpoint(e, t, k)),
                                                             "--out", str(t / "ev")], msg))
    for kind in ("bit-flipped", "wrong-model"):
        c.append((f"certify-ckpt-{kind}", lambda e, t, k=kind: ["certify", "--checkpoint",
                                                                str(_checkpoint(e, t, k)), "--out", str(t / "c")],
                  CHECKPOINT_CASES[kind]))
        c.append((f"resume-ckpt-{kind}", lambda e, t, k=kind: ["train", "--resume", str(_checkpoint(e, t, k))],
                  CHECKPOINT_CASES[kind]))

    def ev(*flags):
        return lambda e, t: ["eval", "--checkpoint", str(e["ckpt"]), "--out", str(t / "ev"), *flags]

    def cert(*flags):
        return lambda e, t: ["certify", "--checkpoint", str(e["ckpt"]), "--out", str(t / "c"), *flags]

    c += [
        ("eval-batch-size-0", ev("--batch-size", "0"), "--batch-size: must be a positive integer, got 0"),
        ("eval-radii-chunk-0", ev("--radii-chunk", "0"), "--radii-chunk: must be a positive integer"),
        ("eval-threads-neg", ev("--threads", "-1"), "--threads: must be a positive integer"),
        ("eval-device-foo", ev("--device", "foo"), "--device: must be auto, cpu, cuda or cuda:<index>"),
        ("eval-device-cuda-99", ev("--device", "cuda:99"), "cuda:99"),
        ("eval-test-subset-0", ev("--test-subset", "0"), "--test-subset: must be a positive integer"),
        ("eval-test-subset-neg", ev("--test-subset", "-5"), "--test-subset: must be a positive integer"),
        ("eval-pgd-steps-neg", ev("--pgd-steps", "-1"), "--pgd-steps: must be an integer >= 0"),
        ("eval-pgd-restarts-0", ev("--pgd-restarts", "0"), "--pgd-restarts: must be a positive integer"),
        ("eval-pgd-step-size-nan", ev("--pgd-step-size", "nan"), "--pgd-step-size: must be a finite number"),
        ("eval-batch-size-text", ev("--batch-size", "many"), "--batch-size: must be a positive integer"),
        ("eval-eps-grid-huge", ev("--eps-grid", "0:1:1e-8"), "more than the limit of 10,000"),
        ("eval-eps-grid-nan", ev("--eps-grid", "nan:1:0.1"), "must be finite"),
        ("certify-k-0", cert("--k", "0"), "--k: must be a positive integer"),
        ("certify-rounds-0", cert("--rounds", "0"), "--rounds: must be a positive integer"),
        ("certify-eps-max-neg", cert("--eps-max", "-1"), "--eps-max: must be a finite number > 0"),
        ("certify-eps-max-nan", cert("--eps-max", "nan"), "--eps-max: must be a finite number > 0"),
        ("certify-eps-max-0", cert("--eps-max", "0"), "--eps-max: must be a finite number > 0"),
        ("certify-test-subset-0", cert("--test-subset", "0"), "--test-subset: must be a positive integer"),
        ("certify-batch-size-0", cert("--batch-size", "0"), "--batch-size: must be a positive integer"),
        ("certify-threads-neg", cert("--threads", "-1"), "--threads: must be a positive integer"),
        ("certify-device-foo", cert("--device", "foo"), "--device: must be auto, cpu, cuda"),
        # outputs under an existing file
        ("eval-out-under-file", lambda e, t: ["eval", "--checkpoint", str(e["ckpt"]), "--out",
                                              str(e["blocker"] / "ev")], "is a file, not a folder"),
        ("eval-plot-under-file", lambda e, t: ["eval", "--checkpoint", str(e["ckpt"]), "--out", str(t / "ev"),
                                               "--plot", str(e["blocker"] / "x.png")], "is a file, not a folder"),
        ("certify-out-under-file", lambda e, t: ["certify", "--checkpoint", str(e["ckpt"]), "--out",
                                                 str(e["blocker"] / "c")], "is a file, not a folder"),
        ("train-out-dir-under-file", lambda e, t: ["train", "--config", str(e["config"]),
                                                   f"out_dir={e['blocker'] / 'run'}"], "is a file, not a folder"),
        ("train-out-dir-is-file", lambda e, t: ["train", "--config", str(e["config"]),
                                                f"out_dir={e['blocker']}"], "is an existing file"),
        ("plot-output-under-file", lambda e, t: ["plot", str(_json(t, "good")), "-o",
                                                 str(e["blocker"] / "f.png")], "is a file, not a folder"),
        ("demo-out-under-file", lambda e, t: ["demo", "--out", str(e["blocker"] / "demo")],
         "is a file, not a folder"),
        # result files given to plot
        ("plot-corrupt-json", lambda e, t: ["plot", str(_json(t, "corrupt")), "-o", str(t / "f.png")],
         "corrupt JSON"),
        ("plot-binary", lambda e, t: ["plot", str(_json(t, "binary")), "-o", str(t / "f.png")], "not a"),
        ("plot-json-list", lambda e, t: ["plot", str(_json(t, "list")), "-o", str(t / "f.png")],
         "not a gmbound eval JSON"),
        ("plot-json-bad-values", lambda e, t: ["plot", str(_json(t, "bad-values")), "-o", str(t / "f.png")],
         "not a gmbound eval JSON"),
        ("plot-missing", lambda e, t: ["plot", str(t / "nope.json"), "-o", str(t / "f.png")], "nope.json"),
    ]
    return c


def test_plot_accepts_results_with_unattacked_radii(tmp_path, capsys):
    """A PGD grid coarser than the verification grid leaves null PGD errors: still a valid result."""
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"eps": [0.0, 0.1, 0.2], "verified_error_any": [0.1, 0.5, 0.9],
                                "pgd_error": [0.1, None, 0.3], "verified_error": {"ibp": [0.1, 0.5, 0.9]}}))
    assert main(["plot", str(path), "-o", str(tmp_path / "f.png")]) == 0
    assert (tmp_path / "f.png").is_file()


def _json(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.json"
    good = {"eps": [0.0, 0.1], "verified_error_any": [0.1, 0.5], "pgd_error": [0.1, 0.3],
            "verified_error": {"ibp": [0.1, 0.5]}, "meta": {"label": "x"}}
    if kind == "good":
        path.write_text(json.dumps(good))
    elif kind == "corrupt":
        path.write_text(json.dumps(good)[:-15])
    elif kind == "binary":
        path.write_bytes(os.urandom(64) + b"\xff\xfe")
    elif kind == "list":
        path.write_text("[1, 2, 3]")
    else:
        path.write_text(json.dumps({**good, "pgd_error": ["a", 0.2]}))
    return path


CASES = _cases()


@pytest.mark.parametrize(("argv", "expected"), [(a, m) for _, a, m in CASES], ids=[i for i, _, _ in CASES])
def test_bad_input_exits_2_with_one_line(env, tmp_path, capsys, argv, expected):
    args = argv(env, tmp_path)
    capsys.readouterr()
    code = main(args)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, (code, err)
    assert "Traceback" not in captured.err + captured.out
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"gmbound {args[0]}: error: "), err
    assert expected in err, err

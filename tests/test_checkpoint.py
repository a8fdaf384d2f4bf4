"""Checkpoint integrity: the SHA-256 content digest, and a clear error naming the file for every bad one."""
from __future__ import annotations

import os
import warnings

import pytest
import torch

from gmbound.checkpoint import (DIGEST_KEY, VERSION, CheckpointError, atomic_save, content_digest,
                                load_checkpoint, load_model, with_digest)
from gmbound.config import make_config
from gmbound.train import train

TINY = ["data.train_subset=64", "data.test_subset=16", "model.name=mlp", "model.hidden=[8]",
        "train.method=ibp", "train.epochs=1", "train.batch_size=32", "train.eps=0.05", "train.progress=false",
        "train.tensorboard=false", "train.test_every=0"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt") / "run"
    return train(make_config(overrides=TINY + [f"out_dir={folder}"]), quiet=True)


def _raw(path):
    return torch.load(path, weights_only=True)


def test_digest_is_stored_and_verified(run):
    ckpt = _raw(run.checkpoint)
    assert ckpt["version"] == VERSION == 2
    assert ckpt[DIGEST_KEY] == content_digest(ckpt)
    loaded = load_checkpoint(run.checkpoint)
    assert torch.equal(loaded["model"]["1.weight"], ckpt["model"]["1.weight"])


def test_digest_covers_tensors_and_plain_values(run):
    ckpt = _raw(run.checkpoint)
    base = content_digest(ckpt)
    for change in (lambda c: c["model"]["1.weight"].view(-1)[3].add_(1e-7),   # one weight, one ulp-ish
                   lambda c: c["history"][0].__setitem__("train_loss", 0.0),
                   lambda c: c["config"]["train"].__setitem__("lr", 1.0),
                   lambda c: c.__setitem__("epoch", 7)):
        c = _raw(run.checkpoint)
        change(c)
        assert content_digest(c) != base
    # dtype and shape are hashed too, not only the bytes
    a = {"t": torch.zeros(4, dtype=torch.int32)}
    assert content_digest(a) != content_digest({"t": torch.zeros(2, dtype=torch.int64)})
    assert content_digest(a) != content_digest({"t": torch.zeros(2, 2, dtype=torch.int32)})
    assert content_digest({"a": [1, 2]}) != content_digest({"a": (1, 2)}) != content_digest({"a": "[1, 2]"})


def test_flipped_bytes_in_the_weights_are_refused(run, tmp_path):
    """256 flipped bytes inside a weight tensor's storage: the zip container stays valid (torch does
    not check its CRCs), so only the digest can catch it. Before the digest this loaded silently."""
    data = bytearray(run.checkpoint.read_bytes())
    weight = _raw(run.checkpoint)["model"]["1.weight"]
    offset = bytes(data).find(weight.numpy().tobytes()[:64])
    assert offset > 0
    for i in range(offset, offset + 256):
        data[i] ^= 0xFF
    bad = tmp_path / "flipped.pt"
    bad.write_bytes(bytes(data))
    assert not torch.equal(torch.load(bad, weights_only=True)["model"]["1.weight"], weight)  # loads raw...
    with pytest.raises(CheckpointError, match=r"flipped\.pt.*corrupt.*SHA-256"):
        load_checkpoint(bad)                                                                 # ... not here


def _save(obj, path):
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("case", ["empty", "random", "truncated", "foreign", "future", "no-digest-v2",
                                  "wrong-model", "edited-weights", "missing-entry"])
def test_bad_checkpoints_name_the_file(run, tmp_path, case):
    ckpt = _raw(run.checkpoint)
    path = tmp_path / f"bad-{case}.pt"
    if case == "empty":
        path.write_bytes(b"")
        match = "empty"
    elif case == "random":
        path.write_bytes(os.urandom(4096))
        match = "not a readable"
    elif case == "truncated":
        path.write_bytes(run.checkpoint.read_bytes()[: run.checkpoint.stat().st_size // 2])
        match = "not a readable"
    elif case == "foreign":
        _save({"weights": torch.zeros(3)}, path)
        match = "not a gmbound checkpoint"
    elif case == "future":
        _save(with_digest({**ckpt, "version": VERSION + 1}), path)
        match = "newer than this gmbound"
    elif case == "no-digest-v2":
        _save({k: v for k, v in ckpt.items() if k != DIGEST_KEY}, path)
        match = "no content digest"
    elif case == "wrong-model":  # a consistent file whose weights belong to another architecture
        info = dict(ckpt["model_info"], hidden=[16])
        _save(with_digest({**ckpt, "model_info": info}), path)
        match = "do not belong to the model"
    elif case == "edited-weights":
        ckpt["model"]["1.weight"][0, 0] = 5.9e23
        _save(ckpt, path)
        match = "corrupt"
    else:
        _save(with_digest({k: v for k, v in ckpt.items() if k not in ("model_info", DIGEST_KEY)}), path)
        match = "model_info"
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_version_1_checkpoints_load_with_a_warning(run, tmp_path):
    ckpt = _raw(run.checkpoint)
    old = {k: v for k, v in ckpt.items() if k != DIGEST_KEY}
    old["version"] = 1
    path = _save(old, tmp_path / "v1.pt")
    with pytest.warns(UserWarning, match="without a content digest"):
        model, loaded = load_model(path)
    assert torch.equal(model[1].weight, ckpt["model"]["1.weight"])


def test_atomic_save_respects_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_save({"a": torch.zeros(1)}, tmp_path / "x.pt")
    finally:
        os.umask(old)
    assert (tmp_path / "x.pt").stat().st_mode & 0o777 == 0o640  # mkstemp alone gives 0600


def test_current_checkpoints_load_without_warnings(run):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_checkpoint(run.checkpoint)

"""Data-parallel training: two CPU processes (gloo) on half batches update like one on the whole batch."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gmbound import BoundedSequential
from gmbound.config import make_config
from gmbound.schedules import ScheduleValues
from gmbound.train import train, train_step

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is needed")

TCFG = {"method": "gm-crown-ibp", "n_radii": 4, "weights": "inverse", "stochastic": False, "backend": "auto",
        "grad_clip": 0.5}
VALUES = ScheduleValues(eps=0.05, kappa=0.6, beta=0.7)


def _model():
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6 * 6, 20), torch.nn.ReLU(),
                               torch.nn.Linear(20, 12), torch.nn.ReLU(), torch.nn.Linear(12, 5)).double()


def _batch():
    g = torch.Generator().manual_seed(7)
    return (torch.rand(8, 1, 6, 6, generator=g, dtype=torch.float64),
            torch.randint(0, 5, (8,), generator=g))


def _step(model, x, y, world_size):
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    train_step(BoundedSequential(model), opt, x, y, VALUES, TCFG, 0.0, 1.0, None, world_size)
    return {"grads": [p.grad.clone() for p in model.parameters()],
            "params": [p.detach().clone() for p in model.parameters()]}


def _half_batch_worker(rank, world, init_file, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        x, y = _batch()
        half = slice(rank * 4, rank * 4 + 4)
        torch.save(_step(_model(), x[half], y[half], world), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one_process_step(tmp_path):
    mp.spawn(_half_batch_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    x, y = _batch()
    single = _step(_model(), x, y, 1)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for a, b in zip(got["grads"], single["grads"]):  # averaged (and clipped) half-batch grads
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        for a, b in zip(got["params"], single["params"]):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_worker(rank, world, port, out_dir, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    try:
        cfg = make_config(overrides=["model.name=mlp", "model.hidden=[16]", "data.train_subset=128",
                                     "data.test_subset=32", "train.batch_size=32", "train.epochs=2",
                                     "train.n_radii=2", "train.progress=false", "train.tensorboard=false",
                                     "train.eps=0.1", "device=cpu", f"out_dir={out_dir}"])
        res = train(cfg, quiet=True)
        torch.save([p.detach() for p in res.model.parameters()], f"{out}/final{rank}.pt")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_torchrun_style_training_end_to_end(tmp_path):
    run = tmp_path / "run"
    mp.spawn(_train_worker, args=(2, _free_port(), str(run), str(tmp_path)), nprocs=2, join=True)
    p0 = torch.load(tmp_path / "final0.pt", weights_only=True)
    p1 = torch.load(tmp_path / "final1.pt", weights_only=True)
    for a, b in zip(p0, p1):  # replicas stay identical
        assert torch.equal(a, b)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and ckpt["epoch"] == 2
    assert ckpt["step"] == 8  # 128 samples / global batch 32 = 4 steps per epoch (16 per process per step)
    for a, b in zip(p0, ckpt["model"].values()):  # rank 0 wrote its own weights
        assert torch.equal(a, b)
    assert len((run / "log.csv").read_text().strip().splitlines()) == 1 + 2  # one writer: header + 2 epochs

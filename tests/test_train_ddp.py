"""Data-parallel training in DistributedDataParallel: two CPU processes (gloo) on half batches update
like one on the whole batch; rank 0 alone writes; a resumed 2-process run is exact; a process that
dies or hangs stops the others with a clear error instead of a hang."""
from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from gmbound.config import make_config
from gmbound.runlock import RunLock
from gmbound.schedules import ScheduleValues
from gmbound.train import DistContext, DistributedRunError, TrainingLoss, data_parallel, train, train_step

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is needed")

TCFG = {"method": "gm-crown-ibp", "n_radii": 4, "weights": "inverse", "stochastic": False, "backend": "auto"}
GRAD_CLIP = 0.5
VALUES = ScheduleValues(eps=0.05, kappa=0.6, beta=0.7)


def _model():
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6 * 6, 20), torch.nn.ReLU(),
                               torch.nn.Linear(20, 12), torch.nn.ReLU(), torch.nn.Linear(12, 5)).double()


def _bn_model():
    torch.manual_seed(4)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6 * 6, 20), torch.nn.BatchNorm1d(20),
                               torch.nn.ReLU(), torch.nn.Linear(20, 5)).double()


def _batch():
    g = torch.Generator().manual_seed(7)
    return (torch.rand(8, 1, 6, 6, generator=g, dtype=torch.float64),
            torch.randint(0, 5, (8,), generator=g))


def _step(model, x, y, ctx, grad_clip=GRAD_CLIP):
    loss = data_parallel(TrainingLoss(model, TCFG, 0.0, 1.0), torch.device("cpu"), ctx)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    result = train_step(loss, opt, x, y, VALUES, None, grad_clip)
    return {"ddp": isinstance(loss, DistributedDataParallel), "loss": result.loss.detach(),
            "grads": [p.grad.clone() for p in model.parameters()],
            "params": [p.detach().clone() for p in model.parameters()]}


def _half_batch_worker(rank, world, init_file, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        x, y = _batch()
        half = slice(rank * 4, rank * 4 + 4)
        ctx = DistContext(rank, world, rank)
        torch.save(_step(_model(), x[half], y[half], ctx), f"{out}/rank{rank}.pt")
        torch.save(_step(_bn_model(), x[half], y[half], ctx, grad_clip=None), f"{out}/bn_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def half_batch_steps(tmp_path_factory):
    """One step of each model on 2 gloo processes, each on its half of the batch (one spawn for both tests)."""
    out = tmp_path_factory.mktemp("half_batch")
    mp.spawn(_half_batch_worker, args=(2, str(out / "init"), str(out)), nprocs=2, join=True)
    return out


def test_two_processes_match_one_process_step(half_batch_steps):
    tmp_path = half_batch_steps
    x, y = _batch()
    single = _step(_model(), x, y, DistContext())
    assert not single["ddp"]
    got = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    assert all(g["ddp"] for g in got)  # the step ran through DistributedDataParallel
    # batch-mean losses of equal halves: their mean is the whole batch's loss
    torch.testing.assert_close((got[0]["loss"] + got[1]["loss"]) / 2, single["loss"], rtol=1e-12, atol=0)
    for g in got:
        for a, b in zip(g["grads"], single["grads"]):  # averaged by DDP, then clipped
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        for a, b in zip(g["params"], single["params"]):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_batchnorm_under_ddp_normalises_each_share_with_its_own_statistics(half_batch_steps):
    """PyTorch's DDP semantics (no SyncBatchNorm): a train-mode BatchNorm normalises each process's
    share with that share's statistics, and DDP averages the gradients of those per-share losses."""
    tmp_path = half_batch_steps
    x, y = _batch()
    per_share = [_step(_bn_model(), x[h * 4:h * 4 + 4], y[h * 4:h * 4 + 4], DistContext(), grad_clip=None)
                 for h in range(2)]
    for rank in range(2):
        got = torch.load(tmp_path / f"bn_rank{rank}.pt", weights_only=True)
        for a, g0, g1 in zip(got["grads"], per_share[0]["grads"], per_share[1]["grads"]):
            torch.testing.assert_close(a, (g0 + g1) / 2, rtol=1e-10, atol=1e-12)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank, world, port):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))


def _tiny_cfg(out_dir, *extra):
    return make_config(overrides=["model.name=mlp", "model.hidden=[16]", "data.train_subset=128",
                                  "data.test_subset=32", "train.batch_size=32", "train.epochs=2",
                                  "train.n_radii=2", "train.progress=false", "train.tensorboard=false",
                                  "train.eps=0.1", "train.ramp_epochs=2", "train.grad_clip=1.0", "device=cpu",
                                  "threads=1", f"out_dir={out_dir}", *extra])


def _train_worker(rank, world, port, tmp):
    """An uninterrupted 2-epoch run, then the same run stopped after epoch 1 and resumed; rank 1
    records every checkpoint write it attempts (there must be none)."""
    import gmbound.train as train_mod

    _join(rank, world, port)
    real_save, saves = train_mod.atomic_save, []

    def recording_save(state, path):
        saves.append(str(path))
        return real_save(state, path)

    train_mod.atomic_save = recording_save
    try:
        full = train(_tiny_cfg(f"{tmp}/full"), quiet=True)
        torch.save([p.detach() for p in full.model.parameters()], f"{tmp}/final{rank}.pt")
        part = _tiny_cfg(f"{tmp}/part")
        first = train(part, stop_after_epoch=1, quiet=True)
        assert first.stopped_early and first.epochs_done == 1
        resumed = train(part, resume=True, quiet=True)
        torch.save([p.detach() for p in resumed.model.parameters()], f"{tmp}/resumed{rank}.pt")
        (open(f"{tmp}/saves{rank}.txt", "w")).write("\n".join(saves))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_torchrun_style_training_rank0_writes_and_resume_is_exact(tmp_path):
    mp.spawn(_train_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    p0 = torch.load(tmp_path / "final0.pt", weights_only=True)
    p1 = torch.load(tmp_path / "final1.pt", weights_only=True)
    for a, b in zip(p0, p1):  # replicas stay identical
        assert torch.equal(a, b)
    run = tmp_path / "full"
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and ckpt["epoch"] == 2
    assert ckpt["step"] == 8  # 128 samples / global batch 32 = 4 steps per epoch (16 per process per step)
    for a, b in zip(p0, ckpt["model"].values()):  # rank 0 wrote its own weights
        assert torch.equal(a, b)
    assert len((run / "log.csv").read_text().strip().splitlines()) == 1 + 2  # one writer: header + 2 epochs
    assert (tmp_path / "saves1.txt").read_text() == ""  # rank 1 never wrote a checkpoint
    assert (tmp_path / "saves0.txt").read_text().count("checkpoint.pt") == 2 + 1 + 1
    # stopped after epoch 1 and resumed under 2 processes: bitwise the uninterrupted run
    for rank in range(2):
        for a, b in zip(p0, torch.load(tmp_path / f"resumed{rank}.pt", weights_only=True)):
            assert torch.equal(a, b)


def _failing_worker(rank, world, port, tmp, mode, timeout_s):
    """Rank 1 dies (``mode="die"``) or hangs (``"hang"``) in its second step; rank 0 reports what it saw."""
    import gmbound.train as train_mod

    _join(rank, world, port)
    if rank == 1:
        real, calls = train_mod.train_step, {"n": 0}

        def failing(*a, **k):
            calls["n"] += 1
            if calls["n"] == 2:
                if mode == "die":
                    os._exit(3)
                time.sleep(600)
            return real(*a, **k)

        train_mod.train_step = failing
    start = time.monotonic()
    try:
        train(_tiny_cfg(f"{tmp}/run", "train.epochs=1", f"dist_timeout={timeout_s}"), quiet=True)
        outcome = "finished"
    except Exception as err:  # noqa: BLE001 (the test inspects whatever it is)
        outcome = f"{type(err).__name__}: {err}"
    if rank == 0:  # the run released its folder: this process can take the lock again
        RunLock(f"{tmp}/run").acquire().release()
    with open(f"{tmp}/rank{rank}.txt", "w") as f:
        f.write(f"{time.monotonic() - start:.1f}\n{outcome}")
    os._exit(0)  # leave without destroy_process_group: the peer is gone


@pytest.mark.parametrize("mode,timeout_s", [("die", 120), ("hang", 3)])
def test_a_dead_or_stuck_rank_stops_the_run_with_a_clear_error(tmp_path, mode, timeout_s):
    spawn = multiprocessing.get_context("spawn")  # not mp.spawn: it would kill rank 0 as soon as rank 1 dies
    port = _free_port()
    procs = [spawn.Process(target=_failing_worker, args=(r, 2, port, str(tmp_path), mode, timeout_s))
             for r in range(2)]
    for p in procs:
        p.start()
    try:
        procs[0].join(timeout=120)
        assert procs[0].exitcode == 0, "rank 0 did not end (it hangs)"
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join()
    seconds, outcome = (tmp_path / "rank0.txt").read_text().split("\n", 1)
    assert outcome.startswith("DistributedRunError: rank 0 of 2: a collective with the other processes failed")
    assert f"dist_timeout = {timeout_s:g} s" in outcome and "another process died or is stuck" in outcome
    if mode == "die":  # a lost connection is seen at once, long before the timeout
        assert float(seconds) < timeout_s / 2, seconds
    assert issubclass(DistributedRunError, RuntimeError)


def test_readme_torchrun_line_on_two_cpu_processes(tmp_path):
    """The README's one-machine line, ``torchrun --standalone --nproc_per_node N -m gmbound train``,
    with 2 CPU processes (``python -m torch.distributed.run`` is torchrun, from this interpreter)."""
    config = tmp_path / "tiny.yaml"
    config.write_text("model: {name: mlp, hidden: [16]}\ndata: {train_subset: 64, test_subset: 16}\n"
                      "train: {batch_size: 32, epochs: 1, n_radii: 2, eps: 0.1, progress: false, "
                      "tensorboard: false}\n")
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "gmbound", "train", "--config", str(config), "device=cpu", f"out_dir={run}"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert done.stdout.count("finished epoch 1/1") == 1  # rank 0 alone reports
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and ckpt["step"] == 2  # 64 samples / global batch 32

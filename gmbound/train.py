"""Training: IBP, CROWN-IBP, GM-IBP and GM-CROWN-IBP with CROWN-IBP's schedules.

``train(cfg)`` runs a validated configuration (``gmbound.config.make_config``): it builds the
data loaders and the model, ramps eps / kappa / beta per batch (``CrownIBPSchedule``), steps
Adam with a multi-step lr decay, logs every epoch to a CSV file (and TensorBoard when it is
installed), and writes a checkpoint atomically after every epoch. ``resume=True`` continues
from that checkpoint to bitwise the same weights as an uninterrupted run.

Under ``torchrun`` (``RANK`` / ``WORLD_SIZE`` set) it trains data-parallel: each process takes
``batch_size / world_size`` samples of every batch (``DistributedSampler``) and the model runs in
``torch.nn.parallel.DistributedDataParallel``. The bound engine reads the parameters without
calling the model's ``forward``, so DDP wraps ``TrainingLoss``, a module whose ``forward`` is the
whole training loss (the natural pass and the bound passes, ``compute_loss``): DDP's reducer sees
every step, averages the gradients in buckets that overlap the all-reduce with the backward pass,
and broadcasts rank 0's buffers (BatchNorm statistics) before every forward, as PyTorch documents.
The backend follows the device (nccl on CUDA, gloo on CPU); a collective that waits longer than
the config key ``dist_timeout`` (seconds) for a dead or stuck process stops the run with
``DistributedRunError`` instead of hanging. Only rank 0 writes (checkpoints, log).

A run holds an exclusive lock on its folder (``gmbound.runlock``) from start to end, so a second
run into the same folder is refused. A non-finite loss or non-finite weights stop the run with
``TrainingDivergedError`` before anything of that epoch is written: the last checkpoint and the
log stay those of the last good epoch. Each epoch's log row is written after its checkpoint.
"""
from __future__ import annotations

import csv
import math
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .bounded import BoundedSequential
from .certificates import correct_mask, verified_mask
from .checkpoint import (CHECKPOINT_NAME, FORMAT, VERSION, atomic_save, capture_rng, load_checkpoint,
                         load_scheduler_state, remove_stale_temporaries, restore_rng, scheduler_state,
                         with_digest)
from .config import ConfigError, config_diff, dump_yaml, out_dir as config_out_dir
from .cpu_allocator import keep_freed_memory
from .data import DATASET_INFO, make_loaders
from .losses import GMLossResult, gm_loss
from .models import build_model
from .outputs import check_output_folder
from .runlock import RunLock
from .schedules import CrownIBPSchedule, ScheduleValues

LOG_NAME = "log.csv"
LOG_FIELDS = ("epoch", "step", "lr", "eps", "kappa", "beta", "train_loss", "train_natural_error",
              "train_verified_error", "train_verified_at", "test_natural_error", "test_verified_error", "test_verifier",
              "test_eps", "epoch_seconds")


class TrainingDivergedError(RuntimeError):
    """The loss or the weights became non-finite; nothing of the failing epoch was written."""


# ----------------------------------------------------------------------------- processes
@dataclass(frozen=True)
class DistContext:
    """This process's place in a (possibly one-process) data-parallel run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when available (``cuda:<local_rank>`` under torchrun), else CPU."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("config key 'device' is cuda but no CUDA device is available (use device=cpu)")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {spec!r}: must be auto, cpu, cuda or cuda:<index>") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device {spec!r}: this machine has {count} CUDA device(s)")
    return device


class DistributedRunError(RuntimeError):
    """A collective with the other processes failed or timed out: a process died or is stuck."""


# What gloo, nccl and c10d put in the RuntimeErrors of a lost peer or a timed-out collective
# (gloo raises plain RuntimeErrors: "Connection reset by peer", "Timed out waiting 3000ms ...").
_COLLECTIVE_FAILURE_WORDS = ("gloo", "nccl", "c10d", "timed out", "connection reset", "connection closed",
                             "connection refused", "broken pipe")


def collective_failure(err: BaseException, ctx: DistContext, timeout_s: float) -> Optional[DistributedRunError]:
    """``err`` restated as a ``DistributedRunError`` when it is a failed collective of a multi-process
    run (a peer gone or a collective past ``timeout_s``), else ``None``."""
    if not ctx.enabled:
        return None
    import torch.distributed as dist

    dist_error = getattr(dist, "DistError", ())
    text = str(err).strip()
    if not (isinstance(err, dist_error) or (isinstance(err, RuntimeError) and any(
            word in text.lower() for word in _COLLECTIVE_FAILURE_WORDS))):
        return None
    first = text.splitlines()[0] if text else type(err).__name__
    return DistributedRunError(
        f"rank {ctx.rank} of {ctx.world_size}: a collective with the other processes failed or waited more "
        f"than dist_timeout = {timeout_s:g} s, so another process died or is stuck (its own output says "
        f"why); stopping. ({first[:300]})")


def setup_distributed(device: torch.device, timeout_s: float = 1800.0) -> DistContext:
    """Join the process group when launched by ``torchrun`` (nccl on CUDA, gloo on CPU).

    ``timeout_s`` bounds the rendezvous and every collective: a process that dies or hangs stops
    the others with an error after at most that long (config key ``dist_timeout``).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    import datetime

    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    ctx = DistContext(rank, world, local)
    if not dist.is_initialized():
        try:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world,
                                    timeout=datetime.timedelta(seconds=timeout_s))
        except Exception as err:
            failure = collective_failure(err, ctx, timeout_s)
            if failure is None:
                raise
            raise DistributedRunError(f"{failure} The rendezvous at MASTER_ADDR:MASTER_PORT = "
                                      f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} "
                                      "did not gather every process.") from err
    return ctx


class TrainingLoss(nn.Module):
    """The training loss of one batch as a module's ``forward``: what DistributedDataParallel wraps.

    ``forward(x, y, values, generator)`` runs ``compute_loss``: the natural pass and the bound
    passes over ``model``'s parameters (read by the bound engine, not through ``model.forward``).
    Wrapped in DDP, every step then goes through DDP's forward, so its reducer is prepared for the
    backward that follows and its gradient hooks average the gradients as they are produced.
    """

    def __init__(self, model: nn.Module, tcfg: dict, x_min: float, x_max: float):
        super().__init__()
        self.net = BoundedSequential(model)
        self.tcfg, self.x_min, self.x_max = tcfg, x_min, x_max

    @property
    def model(self) -> nn.Module:
        return self.net.model

    def forward(self, x: torch.Tensor, y: torch.Tensor, values: ScheduleValues,
                generator: Optional[torch.Generator] = None) -> GMLossResult:
        return compute_loss(self.net, x, y, values, self.tcfg, self.x_min, self.x_max, generator)


def data_parallel(loss: TrainingLoss, device: torch.device, ctx: DistContext) -> nn.Module:
    """``loss`` in DistributedDataParallel for a multi-process run, else ``loss`` itself.

    DDP broadcasts rank 0's parameters and buffers when it is built (so every replica starts
    equal, a resumed run too) and rank 0's buffers before every forward (``broadcast_buffers``);
    a train-mode BatchNorm normalises each process's share of the batch with that share's
    statistics (PyTorch's DDP semantics; no SyncBatchNorm). ``find_unused_parameters=False``:
    every parameter takes part in the natural pass f(x) of every step (a zero weight such as
    kappa = 0 still gives it a gradient), so DDP need not walk the autograd graph each step looking
    for unused ones; a model with a parameter outside f(x) makes DDP stop at the next step with its
    own error listing the parameters that got no gradient.
    """
    if not ctx.enabled:
        return loss
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return DistributedDataParallel(loss, device_ids=[index], find_unused_parameters=False)
    return DistributedDataParallel(loss, find_unused_parameters=False)


# ----------------------------------------------------------------------------- model and data
def model_info(cfg: dict) -> dict[str, Any]:
    """What ``build_model`` needs, stored in checkpoints so a model can be rebuilt without the config."""
    info = DATASET_INFO[cfg["data"]["name"]]
    return {"name": cfg["model"]["name"], "in_channels": info.channels, "in_size": info.size,
            "n_classes": info.n_classes, "normalize": bool(cfg["model"]["normalize"]),
            "mean": list(info.mean), "std": list(info.std), "hidden": cfg["model"]["hidden"],
            "x_min": info.x_min, "x_max": info.x_max}


def build_run_model(cfg: dict) -> nn.Sequential:
    mi = model_info(cfg)
    kwargs = {"hidden": mi["hidden"]} if mi["hidden"] else {}
    normalize = (mi["mean"], mi["std"]) if mi["normalize"] else None
    return build_model(mi["name"], mi["in_channels"], mi["in_size"], mi["n_classes"], normalize=normalize,
                       **kwargs)


def build_loaders(cfg: dict, ctx: DistContext = DistContext()) -> tuple[DataLoader, DataLoader]:
    """The training and test loaders; under torchrun the training one is split by a DistributedSampler."""
    d, t = cfg["data"], cfg["train"]
    if t["batch_size"] % ctx.world_size:
        raise ConfigError(f"config key 'train.batch_size' ({t['batch_size']}) must be divisible by the "
                          f"number of processes ({ctx.world_size})")
    try:
        train_loader, test_loader = make_loaders(
            d["name"], d["dir"], t["batch_size"] // ctx.world_size, download=d["download"],
            num_workers=d["num_workers"], seed=cfg["seed"], train_subset=d["train_subset"],
            test_subset=d["test_subset"], test_batch_size=d["test_batch_size"], augment=d["augment"])
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{err}\n(config keys 'data.name' = {d['name']!r}, 'data.dir' = "
                                f"{d['dir']!r})") from None
    if ctx.enabled:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(train_loader.dataset, num_replicas=ctx.world_size, rank=ctx.rank,
                                     shuffle=True, seed=cfg["seed"])
        train_loader = DataLoader(train_loader.dataset, batch_size=t["batch_size"] // ctx.world_size,
                                  sampler=sampler, num_workers=d["num_workers"],
                                  pin_memory=train_loader.pin_memory)
    return train_loader, test_loader


def make_schedule(tcfg: dict, steps_per_epoch: int) -> CrownIBPSchedule:
    # fractional epochs (e.g. a 0.5-epoch warm-up in a 10-epoch budget) round to whole batches
    return CrownIBPSchedule(eps_train=tcfg["eps"],
                            warmup_steps=round(tcfg["warmup_epochs"] * steps_per_epoch),
                            ramp_steps=round(tcfg["ramp_epochs"] * steps_per_epoch),
                            kappa_start=tcfg["kappa_start"], kappa_end=tcfg["kappa_end"],
                            beta_start=tcfg["beta_start"], beta_end=tcfg["beta_end"], ramp=tcfg["ramp"])


def make_optimizer(model: nn.Module, tcfg: dict) -> torch.optim.Optimizer:
    if tcfg["optimizer"] == "sgd":
        return torch.optim.SGD(model.parameters(), lr=tcfg["lr"], momentum=0.9, weight_decay=tcfg["weight_decay"])
    return torch.optim.Adam(model.parameters(), lr=tcfg["lr"], weight_decay=tcfg["weight_decay"])


# ----------------------------------------------------------------------------- one step
def method_settings(method: str, n_radii: int) -> tuple[str, int]:
    """``(bound method, number of radii)`` of a training method."""
    return {"ibp": ("ibp", 1), "crown-ibp": ("crown-ibp", 1), "gm-ibp": ("ibp", n_radii),
            "gm-crown-ibp": ("crown-ibp", n_radii), "natural": ("ibp", 1)}[method]


def compute_loss(net: BoundedSequential, x: torch.Tensor, y: torch.Tensor, values: ScheduleValues,
                 tcfg: dict, x_min: float, x_max: float,
                 generator: Optional[torch.Generator] = None) -> GMLossResult:
    """The batch loss of ``tcfg['method']`` at this step's eps / kappa / beta."""
    method = tcfg["method"]
    if method == "natural":
        return gm_loss(net, x, y, 0.0, n_radii=1, kappa=1.0)  # eps = 0: plain cross-entropy
    bound, n = method_settings(method, tcfg["n_radii"])
    stochastic = bool(tcfg["stochastic"]) and n > 1
    return gm_loss(net, x, y, values.eps, n_radii=n, weights=tcfg["weights"], kappa=values.kappa,
                   beta=values.beta, method=bound, x_min=x_min, x_max=x_max, stochastic=stochastic,
                   generator=generator if stochastic else None, backend=tcfg["backend"],
                   loss_fusion=bool(tcfg.get("loss_fusion", False)))


def train_step(loss: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               values: ScheduleValues, generator: Optional[torch.Generator] = None,
               grad_clip: Optional[float] = None) -> GMLossResult:
    """Loss, backward, clipping, optimiser step. ``loss``: a ``TrainingLoss``, or one in
    DistributedDataParallel (``data_parallel``), whose backward then averages the gradients over
    the processes, so the clipping sees the gradient of the whole batch."""
    optimizer.zero_grad(set_to_none=True)
    result = loss(x, y, values, generator)
    result.loss.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(loss.parameters(), grad_clip)
    optimizer.step()
    return result


def batch_verified_error(result: GMLossResult) -> float:
    """The batch's training verified error, logged as ``train_verified_error``.

    Exact GRT and single-radius methods: the error at the largest radius, eps. Stochastic GRT
    bounds each sample at the radius it drew only, so the error at eps is not known; the log
    then holds the fraction of samples not certified at their own drawn radius (an unbiased
    estimate of sum_i c_i err(r_i)), and ``train_verified_at`` says so. Compare runs by the
    held-out ``test_verified_error`` at eps_train, which every method computes alike.
    """
    if result.drawn_index is not None:
        return float(result.verified_error[result.drawn_index].mean())
    return float(result.verified_error[-1])


def verified_error_kind(tcfg: dict) -> str:
    """What ``train_verified_error`` measures for this run (see ``batch_verified_error``)."""
    _, n = method_settings(tcfg["method"], tcfg["n_radii"])
    return "drawn radius" if tcfg["stochastic"] and n > 1 else "eps"


# ----------------------------------------------------------------------------- logging
class EpochLog:
    """CSV rows (rank 0), mirrored to TensorBoard when requested and importable."""

    def __init__(self, folder: Path, rows: list[dict], tensorboard: Any):
        self.path = folder / LOG_NAME
        self.rows = list(rows)
        self._rewrite()
        self.writer = None
        if tensorboard in ("auto", True):
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                if tensorboard is True:
                    warnings.warn("train.tensorboard is true but tensorboard is not installed; CSV only")
            else:
                self.writer = SummaryWriter(str(folder / "tensorboard"))

    def _rewrite(self) -> None:
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, LOG_FIELDS)
            w.writeheader()
            w.writerows(self.rows)
        os.replace(tmp, self.path)

    def append(self, row: dict) -> None:
        self.rows.append(row)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, LOG_FIELDS).writerow(row)
        if self.writer is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key not in ("epoch",) and not (
                        isinstance(value, float) and math.isnan(value)):
                    self.writer.add_scalar(key, value, row["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@torch.no_grad()
def heldout_errors(net: BoundedSequential, loader: DataLoader, eps: float, verifier: str, device: torch.device,
                x_min: float, x_max: float, backend: str = "auto") -> tuple[float, float]:
    """Natural and verified error on a loader at one radius (the per-epoch check)."""
    was_training = net.model.training
    net.model.eval()
    wrong = unverified = total = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits, margins = net.logits_and_margins(x, y, [eps], method=verifier, x_min=x_min, x_max=x_max,
                                                 backend=backend)
        wrong += int((~correct_mask(logits, y)).sum())       # a NaN logit is never a correct prediction
        unverified += int((~verified_mask(margins[0])).sum())  # nor a NaN margin a certificate
        total += len(y)
    net.model.train(was_training)
    return wrong / max(total, 1), unverified / max(total, 1)


# ----------------------------------------------------------------------------- the loop
@dataclass
class TrainResult:
    out_dir: Path
    checkpoint: Path
    epochs_done: int
    model: nn.Sequential
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    stopped_early: bool = False


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)
    random.seed(seed)


def train(cfg: dict, *, resume: bool = False, overwrite: bool = False, stop_after_epoch: Optional[int] = None,
          on_epoch_end: Optional[Callable[[dict], None]] = None, quiet: bool = False) -> TrainResult:
    """Train as ``cfg`` says (a config from ``make_config``). See the module docstring.

    ``stop_after_epoch=k`` stops (as a kill would) once epoch ``k`` is checkpointed;
    ``on_epoch_end(row)`` sees each epoch's log row; ``quiet`` silences the per-epoch print.
    """
    start_time = time.time()
    if cfg["threads"] is not None:
        torch.set_num_threads(cfg["threads"])
    device = resolve_device(cfg["device"], int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before the process group: nccl binds each process to its GPU
    ctx = setup_distributed(device, cfg["dist_timeout"])
    if device.type != "cuda" and cfg["keep_freed_memory"]:
        keep_freed_memory()  # bound steps reallocate Lambda-sized blocks every step (see cpu_allocator)
    folder = config_out_dir(cfg)
    ckpt_path = folder / CHECKPOINT_NAME
    lock = None
    if ctx.is_main:  # rank 0 writes, so rank 0 holds the folder; taken before any checkpoint is read
        check_output_folder(folder, "config key 'out_dir':")
        lock = RunLock(folder).acquire()
    try:
        return _train_locked(cfg, ctx, device, folder, ckpt_path, resume, overwrite, stop_after_epoch,
                             on_epoch_end, quiet, start_time)
    except Exception as err:  # a dead or stuck peer: say so instead of a bare transport error
        failure = collective_failure(err, ctx, cfg["dist_timeout"])
        if failure is None:
            raise
        raise failure from err
    finally:
        if lock is not None:
            lock.release()


def _non_finite_weights(model: nn.Module) -> list[str]:
    """Names of the parameters and buffers holding a NaN or an infinity."""
    return [name for name, t in list(model.named_parameters()) + list(model.named_buffers())
            if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def _diverged(what: str, epoch: int, step: int, tcfg: dict, ckpt_path: Path, saved_epoch: int) -> TrainingDivergedError:
    kept = (f"the checkpoint of epoch {saved_epoch} ({ckpt_path}) is kept" if saved_epoch
            else "no checkpoint was written")
    return TrainingDivergedError(
        f"training diverged: {what} in epoch {epoch + 1} (after {step} optimiser steps); {kept}. "
        f"Lower train.lr (now {tcfg['lr']:g}) or set train.grad_clip")


def _train_locked(cfg: dict, ctx: DistContext, device: torch.device, folder: Path, ckpt_path: Path, resume: bool,
                  overwrite: bool, stop_after_epoch: Optional[int], on_epoch_end: Optional[Callable[[dict], None]],
                  quiet: bool, start_time: float) -> TrainResult:
    """``train`` once the run folder is locked (by rank 0)."""
    tcfg = cfg["train"]
    if ctx.is_main:
        remove_stale_temporaries(folder)  # safe: we hold the lock, so no other run is writing one

    saved = None
    if resume and ckpt_path.is_file():
        saved = load_checkpoint(ckpt_path)
        diff = config_diff(saved["config"], cfg)
        if diff:
            raise ConfigError(f"cannot resume {ckpt_path}: the configuration differs in "
                              f"{', '.join(diff)} (only {', '.join(('train.epochs', 'train.progress'))} "
                              "and similar may change)")
    elif resume and ctx.is_main and not quiet:
        print(f"no checkpoint at {ckpt_path}; starting a fresh run")
    elif ckpt_path.is_file() and not overwrite:
        raise FileExistsError(f"{ckpt_path} exists; pass --resume to continue that run or --overwrite "
                              "to start again (or choose another out_dir)")

    _seed_everything(cfg["seed"])
    train_loader, test_loader = build_loaders(cfg, ctx)
    model = build_run_model(cfg).to(device)
    optimizer = make_optimizer(model, tcfg)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=tcfg["lr_milestones"],
                                                     gamma=tcfg["lr_gamma"])
    steps_per_epoch = len(train_loader)
    schedule = make_schedule(tcfg, steps_per_epoch)
    mi = model_info(cfg)
    x_min, x_max = mi["x_min"], mi["x_max"]
    grt_gen = torch.Generator(device=device)  # stochastic GRT draws; reseeded every epoch (below)
    loader_gen = train_loader.generator if not ctx.enabled else None

    epoch, step, history = 0, 0, []
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        load_scheduler_state(scheduler, saved["scheduler"])
        epoch, step, history = int(saved["epoch"]), int(saved["step"]), list(saved["history"])
        restore_rng(saved["rng"], loader_gen)
        if ctx.is_main and not quiet:
            print(f"resuming {ckpt_path} after epoch {epoch} (step {step})")
    saved_epoch = epoch
    training_loss = TrainingLoss(model, tcfg, x_min, x_max)
    net = training_loss.net
    loss_fn = data_parallel(training_loss, device, ctx)  # DDP from here on: built after a resume's load

    log = None
    if ctx.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.yaml").write_text(dump_yaml(cfg))
        log = EpochLog(folder, history, tcfg["tensorboard"])

    stopped = False
    try:
        while epoch < tcfg["epochs"]:
            epoch_start = time.time()
            model.train()
            if ctx.enabled:
                train_loader.sampler.set_epoch(epoch)
            # a function of (seed, epoch, rank) only, so resuming (also under torchrun) draws the same radii
            grt_gen.manual_seed((cfg["seed"] * 1_000_003 + epoch) * 1009 + ctx.rank)
            sums = torch.zeros(4, dtype=torch.float64)  # loss, natural errors, verified errors, count
            bar = _progress(train_loader, epoch, tcfg, ctx, quiet)
            values = schedule(step) if tcfg["method"] != "natural" else ScheduleValues(0.0, 1.0, 1.0)
            for x, y in bar:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                values = schedule(step) if tcfg["method"] != "natural" else ScheduleValues(0.0, 1.0, 1.0)
                result = train_step(loss_fn, optimizer, x, y, values, grt_gen, tcfg["grad_clip"])
                step += 1
                b = len(y)
                loss = float(result.loss.detach())
                if not math.isfinite(loss):
                    raise _diverged(f"non-finite loss ({loss})", epoch, step, tcfg, ckpt_path, saved_epoch)
                ver = batch_verified_error(result)
                sums += torch.tensor([loss * b, float(result.natural_error) * b, ver * b, b],
                                     dtype=torch.float64)
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{loss:.3f}", err=f"{float(result.natural_error):.3f}",
                                    verr=f"{ver:.3f}", eps=f"{values.eps:.4f}", refresh=False)
            if ctx.enabled:  # the epoch's log statistics (gradients are DDP's business)
                import torch.distributed as dist

                sums = sums.to(device)  # nccl reduces CUDA tensors only
                dist.all_reduce(sums)
                sums = sums.cpu()
            bad = _non_finite_weights(model)
            if bad:
                raise _diverged(f"non-finite weights ({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''})",
                                epoch, step, tcfg, ckpt_path, saved_epoch)
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            epoch += 1
            row = {"epoch": epoch, "step": step, "lr": lr, "eps": values.eps, "kappa": values.kappa,
                   "beta": values.beta, "train_loss": float(sums[0] / sums[3]),
                   "train_natural_error": float(sums[1] / sums[3]),
                   "train_verified_error": float(sums[2] / sums[3]),
                   "train_verified_at": verified_error_kind(tcfg),
                   "test_natural_error": float("nan"), "test_verified_error": float("nan"),
                   "test_verifier": "", "test_eps": float("nan"), "epoch_seconds": 0.0}
            if ctx.is_main:
                every = tcfg["test_every"]
                if every and (epoch % every == 0 or epoch == tcfg["epochs"]):
                    nat, ver = heldout_errors(net, test_loader, tcfg["eps"], tcfg["test_verifier"], device,
                                           x_min, x_max, tcfg["backend"])
                    row.update(test_natural_error=nat, test_verified_error=ver,
                               test_verifier=tcfg["test_verifier"], test_eps=tcfg["eps"])
                row["epoch_seconds"] = round(time.time() - epoch_start, 3)
                history.append(row)
                state = with_digest({
                    "format": FORMAT, "version": VERSION, "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler_state(scheduler),
                    "rng": capture_rng(loader_gen), "config": cfg, "model_info": mi,
                    "epoch": epoch, "step": step, "history": history, "world_size": ctx.world_size,
                    "torch_version": str(torch.__version__),
                })
                atomic_save(state, ckpt_path)
                saved_epoch = epoch
                if tcfg["keep_checkpoints"]:
                    atomic_save(state, folder / f"checkpoint_epoch{epoch}.pt")
                # after the checkpoint: a kill in between leaves the log one row short, which resuming
                # restores from the checkpoint's history, never a row without its checkpoint
                log.append(row)
                if not quiet:
                    print(_format_row(row), flush=True)
                if on_epoch_end is not None:
                    on_epoch_end(row)
            if ctx.enabled:
                import torch.distributed as dist

                dist.barrier()
            if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < tcfg["epochs"]:
                stopped = True
                break
    finally:
        if log is not None:
            log.close()
    return TrainResult(folder, ckpt_path, epoch, model, history, time.time() - start_time, stopped)


def _progress(loader, epoch: int, tcfg: dict, ctx: DistContext, quiet: bool):
    if not tcfg["progress"] or not ctx.is_main or quiet:
        return loader
    from tqdm import tqdm

    return tqdm(loader, desc=f"epoch {epoch + 1}/{tcfg['epochs']}", leave=False, dynamic_ncols=True)


def _format_row(row: dict) -> str:
    text = (f"epoch {row['epoch']:>3}  eps {row['eps']:.4f}  kappa {row['kappa']:.3f}  beta {row['beta']:.3f}  "
            f"lr {row['lr']:.2e}  loss {row['train_loss']:.4f}  err {row['train_natural_error']:.4f}  "
            f"verr {row['train_verified_error']:.4f}")
    if row["test_verifier"]:
        text += (f"  | test err {row['test_natural_error']:.4f}  {row['test_verifier']}-verified err "
                 f"@{row['test_eps']:g} {row['test_verified_error']:.4f}")
    return text + f"  ({row['epoch_seconds']:.1f}s)"

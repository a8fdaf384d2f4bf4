"""Checkpoints: written atomically, readable with ``torch.load(weights_only=True)``.

A checkpoint holds only tensors and plain containers of numbers and strings: the model,
optimiser and lr-scheduler state dicts, every RNG state the run draws from (torch CPU and
CUDA, numpy, Python, the data loader's shuffling generator, the stochastic-GRT generator),
the configuration as a dict, the model's construction data, the number of completed epochs
and optimiser steps, and the per-epoch log rows. That is enough to continue a killed run to
bitwise the same weights as an uninterrupted one.
"""
from __future__ import annotations

import collections
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

FORMAT = "gmbound-checkpoint"
VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"


# ----------------------------------------------------------------------------- RNG states
def capture_rng(loader_generator: Optional[torch.Generator] = None,
                grt_generator: Optional[torch.Generator] = None) -> dict[str, Any]:
    """Every RNG state as tensors and lists (no numpy arrays, no tuples of odd types)."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "numpy": {"kind": str(np_state[0]), "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gauss": float(np_state[4])},
        "python": {"version": int(py_version), "internal": list(py_internal), "gauss_next": py_gauss},
    }
    if loader_generator is not None:
        state["loader"] = loader_generator.get_state()
    if grt_generator is not None:
        state["grt"] = grt_generator.get_state()
    return state


def restore_rng(state: dict[str, Any], loader_generator: Optional[torch.Generator] = None,
                grt_generator: Optional[torch.Generator] = None) -> None:
    """Inverse of ``capture_rng``."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        cuda_states = state["cuda"][:torch.cuda.device_count()]
        for index, s in enumerate(cuda_states):
            torch.cuda.set_rng_state(s, index)
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if loader_generator is not None and "loader" in state:
        loader_generator.set_state(state["loader"])
    if grt_generator is not None and "grt" in state:
        grt_generator.set_state(state["grt"])


# ----------------------------------------------------------------------------- scheduler state
def scheduler_state(scheduler: Any) -> dict[str, Any]:
    """A scheduler's state dict with ``Counter``s turned into plain dicts (for older torch allowlists)."""
    state = scheduler.state_dict()
    return {k: dict(v) if isinstance(v, collections.Counter) else v for k, v in state.items()}


def load_scheduler_state(scheduler: Any, state: dict[str, Any]) -> None:
    state = dict(state)
    if isinstance(getattr(scheduler, "milestones", None), collections.Counter) and "milestones" in state:
        state["milestones"] = collections.Counter(state["milestones"])
    scheduler.load_state_dict(state)


# ----------------------------------------------------------------------------- files
def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace``: a reader (or a
    kill) never sees a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """A gmbound checkpoint, loaded with ``weights_only=True``; clear errors for a wrong file."""
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT_NAME
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - report any unpickling failure with the path
        raise ValueError(f"{p}: not a readable gmbound checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{p}: not a gmbound checkpoint (no format tag {FORMAT!r})")
    if ckpt.get("version", 0) > VERSION:
        raise ValueError(f"{p}: checkpoint version {ckpt['version']} is newer than this gmbound "
                         f"understands ({VERSION}); upgrade gmbound")
    return ckpt


def build_model_from_checkpoint(ckpt: dict[str, Any]) -> nn.Sequential:
    """The model of a checkpoint with its weights, in eval mode, on the CPU."""
    from .models import build_model

    info = ckpt["model_info"]
    kwargs = {"hidden": info["hidden"]} if info.get("hidden") else {}
    normalize = (info["mean"], info["std"]) if info.get("normalize") else None
    model = build_model(info["name"], info["in_channels"], info["in_size"], info["n_classes"],
                        normalize=normalize, **kwargs)
    model.load_state_dict(ckpt["model"])
    return model.eval()


def load_model(path: str | Path) -> tuple[nn.Sequential, dict[str, Any]]:
    """``(model, checkpoint)`` for a checkpoint file or a run folder."""
    ckpt = load_checkpoint(path)
    return build_model_from_checkpoint(ckpt), ckpt

"""Checkpoints: written atomically, readable with ``torch.load(weights_only=True)``.

A checkpoint holds only tensors and plain containers of numbers and strings: the model,
optimiser and lr-scheduler state dicts, every RNG state the run draws from (torch CPU and
CUDA, numpy, Python, the data loader's shuffling generator, the stochastic-GRT generator),
the configuration as a dict, the model's construction data, the number of completed epochs
and optimiser steps, and the per-epoch log rows. That is enough to continue a killed run to
bitwise the same weights as an uninterrupted one.

Integrity: since format version 2 a checkpoint stores ``sha256``, a SHA-256 digest over its
whole payload (every tensor's dtype, shape and bytes, and every other value), and
``load_checkpoint`` recomputes it: a flipped bit, a truncated or foreign file gets a
``CheckpointError`` that names the file, never silently wrong weights. Version-1 files (no
digest) still load, with a warning that their integrity cannot be checked.
"""
from __future__ import annotations

import collections
import hashlib
import os
import random
import tempfile
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

FORMAT = "gmbound-checkpoint"
VERSION = 2  # 2: adds the "sha256" content digest
CHECKPOINT_NAME = "checkpoint.pt"
DIGEST_KEY = "sha256"
_REQUIRED = {"config": dict, "model": dict, "model_info": dict, "epoch": int}
_MODEL_INFO_KEYS = ("name", "in_channels", "in_size", "n_classes", "x_min", "x_max")


class CheckpointError(ValueError):
    """A file that is not a usable gmbound checkpoint; the message names the file."""


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


# ----------------------------------------------------------------------------- integrity
def _feed(h: "hashlib._Hash", obj: Any) -> None:
    """Feed ``obj`` to ``h`` unambiguously: a type tag, then a length or the value's bytes.

    Dicts are fed in insertion order, which ``torch.save`` / ``torch.load`` keep, so the digest of
    a loaded checkpoint equals the one computed before saving.
    """
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())  # the buffer itself, no copy
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for key, value in obj.items():
            _feed(h, key)
            _feed(h, value)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}".encode())
        for value in obj:
            _feed(h, value)
    elif obj is None or isinstance(obj, (bool, int, float, str)):
        text = repr(obj).encode()  # repr of a float round-trips exactly
        h.update(f"S{type(obj).__name__}{len(text)}:".encode())
        h.update(text)
    elif isinstance(obj, torch.Size):
        _feed(h, tuple(obj))
    else:
        raise TypeError(f"checkpoint payload holds a {type(obj).__name__}, which cannot be hashed")


def content_digest(payload: dict[str, Any]) -> str:
    """SHA-256 (hex) over every entry of a checkpoint dict but the digest itself."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in payload.items() if k != DIGEST_KEY})
    return h.hexdigest()


def with_digest(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` plus its ``sha256`` entry (what ``atomic_save`` callers store)."""
    return {**payload, DIGEST_KEY: content_digest(payload)}


# ----------------------------------------------------------------------------- files
def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the ``.checkpoint*.pt.*.tmp`` files a kill left behind in ``folder``.

    Call this only while holding the run folder's lock (``gmbound.runlock``): another live run
    may be writing exactly such a file.
    """
    removed = []
    for tmp in Path(folder).glob(".checkpoint*.pt.*.tmp"):
        try:
            tmp.unlink()
            removed.append(tmp)
        except FileNotFoundError:
            pass
    return removed


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace``: a reader (or a
    kill) never sees a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a checkpoint is an ordinary file
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
    """A gmbound checkpoint, loaded with ``weights_only=True`` and checked.

    Raises ``FileNotFoundError`` for a missing file and ``CheckpointError`` (naming the file) for
    an empty, truncated, corrupt (digest mismatch), foreign or future-version file, and for weights
    that do not fit the model the checkpoint describes. A version-1 file (no digest) loads with a
    warning.
    """
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT_NAME
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p}: empty file, not a gmbound checkpoint")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - report any unpickling failure with the path
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{p}: not a readable gmbound checkpoint (truncated or corrupt? "
                              f"{type(err).__name__}: {reason[:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{p}: not a gmbound checkpoint (no format tag {FORMAT!r})")
    version = ckpt.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"{p}: checkpoint has no valid version number ({version!r})")
    if version > VERSION:
        raise CheckpointError(f"{p}: checkpoint version {version} is newer than this gmbound "
                              f"understands ({VERSION}); upgrade gmbound")
    if version >= 2:
        stored = ckpt.get(DIGEST_KEY)
        if not isinstance(stored, str):
            raise CheckpointError(f"{p}: checkpoint version {version} has no content digest; the file is "
                                  "corrupt or was not written by gmbound")
        try:
            actual = content_digest(ckpt)
        except TypeError as err:
            raise CheckpointError(f"{p}: {err}") from None
        if actual != stored:
            raise CheckpointError(f"{p}: checkpoint is corrupt: its SHA-256 content digest does not match "
                                  f"(stored {stored[:12]}..., computed {actual[:12]}...)")
    else:
        warnings.warn(f"{p}: version-1 checkpoint without a content digest (written by an older gmbound); "
                      "its integrity cannot be checked", stacklevel=2)
    for key, kind in _REQUIRED.items():
        if not isinstance(ckpt.get(key), kind):
            raise CheckpointError(f"{p}: not a usable gmbound checkpoint (entry {key!r} missing or not a "
                                  f"{kind.__name__})")
    missing = [k for k in _MODEL_INFO_KEYS if k not in ckpt["model_info"]]
    if missing:
        raise CheckpointError(f"{p}: not a usable gmbound checkpoint (model_info lacks {', '.join(missing)})")
    check_model_fits(ckpt, p)
    return ckpt


def _empty_model(info: dict[str, Any]) -> nn.Sequential:
    """The checkpoint's architecture, for its tensor names and shapes; on the meta device (no memory,
    no initialisation) where every layer allows it."""
    from .models import build_model

    kwargs = {"hidden": info["hidden"]} if info.get("hidden") else {}
    normalize = (info["mean"], info["std"]) if info.get("normalize") else None
    args = (info["name"], info["in_channels"], info["in_size"], info["n_classes"])
    try:
        with torch.device("meta"):
            return build_model(*args, normalize=normalize, **kwargs)
    except RuntimeError:  # a layer that inspects values at construction (Normalize checks std > 0)
        return build_model(*args, normalize=normalize, **kwargs)


def check_model_fits(ckpt: dict[str, Any], source: str | Path = "checkpoint") -> None:
    """Raise ``CheckpointError`` unless ``ckpt["model"]`` has exactly the tensors (names, shapes)
    of the model ``ckpt["model_info"]`` describes."""
    info = ckpt["model_info"]
    try:
        expected = {k: tuple(v.shape) for k, v in _empty_model(info).state_dict().items()}
    except (ValueError, TypeError, KeyError) as err:
        raise CheckpointError(f"{source}: cannot build the checkpoint's model {info.get('name')!r} ({err})") from None
    got = ckpt["model"]
    if not all(isinstance(v, torch.Tensor) for v in got.values()):
        raise CheckpointError(f"{source}: the model entry holds something other than tensors")
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(expected) & set(got) if tuple(got[k].shape) != expected[k])
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
        if extra:
            parts.append(f"unexpected {', '.join(extra[:4])}{' ...' if len(extra) > 4 else ''}")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} with the wrong shape (e.g. {k}: {tuple(got[k].shape)}, "
                         f"the model has {expected[k]})")
        raise CheckpointError(f"{source}: the weights do not belong to the model the checkpoint names "
                              f"({info['name']}): {'; '.join(parts)}")


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

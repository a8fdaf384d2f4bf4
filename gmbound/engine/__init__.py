"""Backend dispatch: which primitive set (compiled kernels or the reference) runs a call.

* ``"reference"``: ``gmbound.reference.primitives``, pure PyTorch, any device and dtype;
* ``"cpu"`` / ``"cuda"``: the compiled kernels of ``gmbound._C`` for that device (an error when
  the extension or its kernels for that device are missing, or the tensors are elsewhere);
* ``"auto"``: the compiled kernels when the extension has them for the tensors' device, else
  the reference (with one warning when the extension is missing altogether).

Both kinds of primitive set satisfy one contract, so the drivers in ``gmbound.propagation`` run
unchanged on either. The compiled kernels take float32 and float64; the compiled set hands
other dtypes (float16, bfloat16) to the reference ops.
"""
from __future__ import annotations

import os
from types import ModuleType
from typing import Optional, Union

import torch

from .. import _extension
from ..reference import primitives as reference_primitives
from . import chunking

BACKENDS = ("auto", "cuda", "cpu", "reference")

_tile_budget: Optional[int] = None


def set_tile_budget(nbytes: Optional[int]) -> None:
    """Bytes of Lambda per tile of (radius, sample) rows (``gmbound.engine.chunking``); 0 = no tiling, None = default."""
    global _tile_budget
    if nbytes is not None and nbytes < 0:
        raise ValueError(f"tile budget must be >= 0 bytes, got {nbytes}")
    _tile_budget = nbytes


def tile_budget(device: Union[torch.device, str] = "cpu") -> int:
    """The tile budget in bytes on ``device``: ``set_tile_budget``, else ``GMBOUND_TILE_MB``, else the default.

    Only CPU calls are tiled (0 elsewhere): a GPU wants the whole batch of rows at once.
    """
    if torch.device(device).type != "cpu":
        return 0
    if _tile_budget is not None:
        return _tile_budget
    env = os.environ.get("GMBOUND_TILE_MB")
    if env:
        try:
            return int(float(env) * 2 ** 20)
        except ValueError:
            raise ValueError(f"GMBOUND_TILE_MB must be a number of megabytes, got {env!r}") from None
    return chunking.DEFAULT_BUDGET_BYTES


def compiled_available(device_type: str) -> bool:
    """Whether compiled kernels for ``device_type`` ("cpu" or "cuda") are built and loaded."""
    if device_type == "cpu":
        return _extension.available()
    if device_type == "cuda":
        return _extension.has_cuda_kernels()
    return False


def _compiled() -> ModuleType:
    from . import compiled

    return compiled


def get_primitives(backend: str, device: Union[torch.device, str]) -> ModuleType:
    """The primitive set for ``backend`` on ``device`` (see ``gmbound.reference.primitives``)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    device = torch.device(device)
    if backend == "reference":
        return reference_primitives
    if backend == "auto":
        if compiled_available(device.type):
            return _compiled()
        if not _extension.available():
            _extension.warn_missing_once()
        elif device.type == "cuda":
            _extension.warn_missing_once("gmbound._C was built without CUDA kernels (no nvcc at build time); "
                                         f"rebuild with CUDA_HOME set: {_extension.BUILD_HINT}")
        return reference_primitives
    # an explicit device backend: refuse rather than silently fall back
    if not _extension.available():
        raise RuntimeError(f"backend {backend!r} needs the compiled extension: {_extension.unavailable_reason()}")
    if device.type != backend:
        raise ValueError(f"backend {backend!r} runs on {backend} tensors, but the tensors are on {device}; "
                         f"use backend='auto' or move the model and data to {backend}")
    if not compiled_available(backend):
        raise RuntimeError(f"gmbound._C was built without CUDA kernels (no nvcc found at build time, or "
                           f"GMBOUND_CUDA=0); rebuild with CUDA_HOME set: {_extension.BUILD_HINT}")
    return _compiled()


__all__ = ["BACKENDS", "compiled_available", "get_primitives", "set_tile_budget", "tile_budget"]

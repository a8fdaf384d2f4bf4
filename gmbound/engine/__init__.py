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

from types import ModuleType
from typing import Union

import torch

from .. import _extension
from ..reference import primitives as reference_primitives

BACKENDS = ("auto", "cuda", "cpu", "reference")


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


__all__ = ["BACKENDS", "compiled_available", "get_primitives"]

"""Backend dispatch: which primitive set (compiled kernels or the reference) runs a call.

STUB: only the reference path so far; the compiled engine replaces this module.
"""
from __future__ import annotations

import torch

from ..reference import primitives as reference_primitives

BACKENDS = ("auto", "cuda", "cpu", "reference")


def get_primitives(backend: str, device: torch.device):
    """The primitive set for ``backend`` on ``device`` (see ``gmbound.reference.primitives``)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend in ("reference", "auto"):
        return reference_primitives
    raise RuntimeError(f"backend {backend!r} needs the compiled extension gmbound._C, which is not built")

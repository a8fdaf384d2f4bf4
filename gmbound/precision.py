"""The float32 precision policy: bounds, and the gradients of bounds, never use TF32 unless asked.

torch lets cuDNN run float32 convolutions in TF32 (a 10-bit mantissa) by default, and lets the user
switch cuBLAS products (and oneDNN ones on the CPU) to TF32 or bfloat16. Bounds computed that way can
miss real outputs by far more than float32 rounding, so certification never does; training may opt
in (``allow_tf32=True``).

torch has two APIs for this. From torch 2.9 on, ``fp32_precision`` attributes
(``torch.backends.fp32_precision``, ``torch.backends.cuda.matmul.fp32_precision``,
``torch.backends.cudnn.conv.fp32_precision``, ...); once a program has set one of them, reading the
older ``allow_tf32`` flags raises a RuntimeError. :func:`strict_float32` therefore uses the new
attributes wherever they exist and ``allow_tf32`` only on older torch.

Gradients: the compiled kernels' backward ops run during ``loss.backward()``, outside the call that
made the bounds; they apply the policy the forward call ran under (:func:`strict_active` is recorded
with each op). Reference-path bounds (no compiled CUDA kernels) are differentiated by torch's own
autograd under the global settings: wrap ``loss.backward()`` in ``strict_float32()`` to keep their
gradients in float32 too.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import torch

__all__ = ["strict_float32", "strict_active", "uses_fp32_precision_api"]

# The settings that decide the precision of the products bounds use: (module of torch.backends, op).
_LEAVES = (("cuda", "matmul"), ("cudnn", "conv"), ("mkldnn", "matmul"), ("mkldnn", "conv"))

_state = threading.local()


def _leaves() -> list:
    """The ``fp32_precision`` holders this torch has (empty before torch 2.9)."""
    found = []
    for backend, op in _LEAVES:
        holder = getattr(getattr(torch.backends, backend, None), op, None)
        if holder is not None and hasattr(holder, "fp32_precision"):
            found.append(holder)
    return found


def uses_fp32_precision_api() -> bool:
    """Whether this torch has the ``fp32_precision`` attributes (torch >= 2.9)."""
    return bool(_leaves())


def strict_active() -> bool:
    """Whether the calling thread is inside a ``strict_float32()`` block (that switched anything)."""
    return getattr(_state, "depth", 0) > 0


@contextlib.contextmanager
def strict_float32(enabled: bool = True) -> Iterator[None]:
    """Run the block with float32 products in full IEEE float32 (no TF32, no bfloat16), then restore.

    Covers cuBLAS matmuls and cuDNN convolutions, and oneDNN's on the CPU where torch has its
    ``fp32_precision`` setting. ``enabled=False`` changes nothing.
    """
    if not enabled:
        yield
        return
    leaves = _leaves()
    if leaves:
        saved_new = [holder.fp32_precision for holder in leaves]
        for holder in leaves:
            holder.fp32_precision = "ieee"
    else:  # torch < 2.9: only the allow_tf32 flags exist
        saved_old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        yield
    finally:
        _state.depth -= 1
        if leaves:
            for holder, value in zip(leaves, saved_new):
                holder.fp32_precision = value
        else:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved_old

"""Load the compiled kernels ``gmbound._C`` (the ``torch.ops.gmbound`` operators), or say why not.

Without the extension the package still works on the pure-PyTorch reference path; the first
time a caller could have used the compiled kernels, one warning says why they are missing and
how to build them.
"""
from __future__ import annotations

import warnings
from types import ModuleType
from typing import Optional

import torch

BUILD_HINT = "pip install --no-build-isolation -e ."

_loaded = False
_module: Optional[ModuleType] = None
_reason: Optional[str] = None
_warned = False


def _load() -> None:
    global _loaded, _module, _reason
    if _loaded:
        return
    _loaded = True
    try:
        from . import _C  # registers the operators (static initialisers of the .so)
    except ModuleNotFoundError as err:
        if err.name != f"{__package__}._C":
            _reason = f"gmbound._C failed to import ({err}); rebuild it: {BUILD_HINT}"
        else:
            _reason = f"gmbound._C not built: {BUILD_HINT}"
        return
    except (ImportError, OSError) as err:
        text = str(err)
        if "undefined symbol" in text or "symbol not found" in text:
            _reason = (f"gmbound._C was built against a different torch than the installed {torch.__version__} "
                       f"({text.strip()}); rebuild it: {BUILD_HINT}")
        else:
            _reason = f"gmbound._C failed to load ({text.strip()}); rebuild it: {BUILD_HINT}"
        return
    built = getattr(_C, "TORCH_VERSION", "unknown")
    if built != torch.__version__:
        _reason = (f"gmbound._C was built against torch {built} but torch {torch.__version__} is installed; "
                   f"rebuild it: {BUILD_HINT}")
        return
    from .engine import _ops  # noqa: F401  fake kernels and autograd formulas for the operators

    _module = _C


def available() -> bool:
    """Whether the compiled operators are loaded and usable."""
    _load()
    return _module is not None


def unavailable_reason() -> Optional[str]:
    """Why the extension is not usable (None when it is)."""
    _load()
    return _reason


def has_cuda_kernels() -> bool:
    """Whether the extension was built with its CUDA kernels (nvcc found at build time)."""
    return available() and bool(getattr(_module, "WITH_CUDA", 0))


def warn_missing_once(detail: str = "") -> None:
    """One warning per process: the compiled kernels are not used, and why."""
    global _warned
    if _warned:
        return
    _warned = True
    reason = unavailable_reason() or detail
    warnings.warn(f"gmbound: using the (slower) pure-PyTorch reference bounds: {reason}", RuntimeWarning,
                  stacklevel=3)

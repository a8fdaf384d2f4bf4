"""Checks on what users pass in, turning bad input into errors that name the problem."""
from __future__ import annotations

import numbers
from typing import Optional, Sequence, Union

import torch

RadiusLike = Union[float, Sequence[float], torch.Tensor]
DomainLike = Union[None, float, torch.Tensor]


class BoundInputError(ValueError):
    """Raised for an argument the bound engine cannot use (shape, value, dtype or device)."""


def check_input(x: torch.Tensor, param: Optional[torch.Tensor]) -> None:
    """``x`` must be a floating tensor with a batch axis, matching the model's dtype and device."""
    if not isinstance(x, torch.Tensor):
        raise BoundInputError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise BoundInputError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 2:
        raise BoundInputError(f"x must have a batch axis first, got shape {tuple(x.shape)}")
    if param is not None:
        if param.dtype != x.dtype:
            raise BoundInputError(f"dtype mismatch: x is {x.dtype} but the model's parameters are {param.dtype}")
        if param.device != x.device:
            raise BoundInputError(f"device mismatch: x is on {x.device} but the model is on {param.device}")
    if not bool(torch.isfinite(x).all()):
        raise BoundInputError("x contains NaN or inf")


def as_radii(eps: RadiusLike, x: torch.Tensor) -> torch.Tensor:
    """Radii as ``[N, B]``, from a number, a vector ``[N]`` or a per-sample matrix ``[N, B]``."""
    batch = x.shape[0]
    if isinstance(eps, torch.Tensor):
        if eps.device != x.device:
            raise BoundInputError(f"device mismatch: eps is on {eps.device} but x is on {x.device}")
        if eps.is_floating_point() and eps.dtype != x.dtype:
            raise BoundInputError(f"dtype mismatch: eps is {eps.dtype} but x is {x.dtype}")
        radii = eps.to(x.dtype)
    else:
        # Python and NumPy numbers, sequences of them and NumPy arrays alike.
        try:
            radii = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
        except (TypeError, ValueError, RuntimeError):
            raise BoundInputError(f"eps must be a number, a sequence of numbers or a tensor; got {eps!r}") from None
    if radii.dim() == 0:
        radii = radii.reshape(1)
    if radii.dim() == 1:
        radii = radii.unsqueeze(1).expand(-1, batch)
    elif radii.dim() != 2 or radii.shape[1] != batch:
        raise BoundInputError(
            f"eps must be a number, a vector [N] or a per-sample matrix [N, B={batch}]; got shape {tuple(radii.shape)}")
    if radii.shape[0] == 0:
        raise BoundInputError("eps is empty: give at least one radius")
    if not bool(torch.isfinite(radii).all()):
        raise BoundInputError("eps must be finite; it contains NaN or inf")
    if bool((radii < 0).any()):
        raise BoundInputError(f"eps must be non-negative; smallest given is {radii.min().item():.6g}")
    return radii


def as_domain(bound: DomainLike, x: torch.Tensor, name: str) -> Optional[torch.Tensor]:
    """The data-domain limit ``x_min`` or ``x_max`` as a tensor that broadcasts against ``x``."""
    if bound is None:
        return None
    t = torch.as_tensor(bound, dtype=x.dtype, device=x.device) if not isinstance(bound, torch.Tensor) else bound
    if t.device != x.device:
        raise BoundInputError(f"device mismatch: {name} is on {t.device} but x is on {x.device}")
    t = t.to(x.dtype)
    try:
        shape = torch.broadcast_shapes(t.shape, x.shape)
    except RuntimeError:
        raise BoundInputError(f"{name} of shape {tuple(t.shape)} does not broadcast against x of shape "
                              f"{tuple(x.shape)}") from None
    if shape != x.shape:
        raise BoundInputError(f"{name} of shape {tuple(t.shape)} would enlarge x of shape {tuple(x.shape)} to "
                              f"{tuple(shape)}; it must broadcast to the shape of x")
    if not bool(torch.isfinite(t).all()):
        raise BoundInputError(f"{name} contains NaN or inf")
    return t


def check_domain(x: torch.Tensor, x_min: Optional[torch.Tensor], x_max: Optional[torch.Tensor]) -> None:
    """The clean point must lie in the data domain, else the clipped box would not contain it."""
    if x_min is not None and x_max is not None and bool((x_min > x_max).any()):
        raise BoundInputError("x_min exceeds x_max somewhere")
    if x_min is not None and bool((x < x_min).any()):
        raise BoundInputError(f"x lies below x_min (smallest x - x_min is {(x - x_min).min().item():.6g}); "
                              "normalise inside the model (gmbound.Normalize) and give x in pixel space")
    if x_max is not None and bool((x > x_max).any()):
        raise BoundInputError(f"x lies above x_max (largest x - x_max is {(x - x_max).max().item():.6g}); "
                              "normalise inside the model (gmbound.Normalize) and give x in pixel space")


def check_spec(C: torch.Tensor, x: torch.Tensor, n_out: int) -> None:
    """A specification is ``[B, K, n_out]`` in the dtype and on the device of ``x``."""
    if not isinstance(C, torch.Tensor):
        raise BoundInputError(f"C must be a torch.Tensor, got {type(C).__name__}")
    if C.dim() != 3 or C.shape[0] != x.shape[0] or C.shape[2] != n_out or C.shape[1] == 0:
        raise BoundInputError(f"C must have shape [B={x.shape[0]}, K, {n_out}] (K >= 1); got {tuple(C.shape)}")
    if C.device != x.device:
        raise BoundInputError(f"device mismatch: C is on {C.device} but x is on {x.device}")
    if C.dtype != x.dtype:
        raise BoundInputError(f"dtype mismatch: C is {C.dtype} but x is {x.dtype}")
    if not bool(torch.isfinite(C).all()):
        raise BoundInputError("C contains NaN or inf")


def check_labels(y: torch.Tensor, x: torch.Tensor, n_classes: int) -> None:
    """Labels are integers ``[B]`` in ``[0, n_classes)`` on the device of ``x``."""
    if not isinstance(y, torch.Tensor) or y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise BoundInputError("y must be an integer tensor of class labels")
    if y.shape != (x.shape[0],):
        raise BoundInputError(f"y must have shape [B={x.shape[0]}], got {tuple(y.shape)}")
    if y.device != x.device:
        raise BoundInputError(f"device mismatch: y is on {y.device} but x is on {x.device}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise BoundInputError(f"labels must lie in [0, {n_classes}); got range [{int(y.min())}, {int(y.max())}]")


def check_count(value, name: str, what: str) -> int:
    """A whole number ``>= 1`` (Python or NumPy integer, not a bool): ``n_radii``, ``crown_chunk``, ..."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise BoundInputError(f"{name} must be a whole number ({what}), got {value!r}")
    if value < 1:
        raise BoundInputError(f"{name} must be at least 1 ({what}), got {value}")
    return int(value)

"""``BoundedTensor``: an input tensor that carries its perturbation, as in ``auto_LiRPA.bounded_tensor``."""
from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn

from .perturbations import PerturbationLpNorm


class BoundedTensor(torch.Tensor):
    """``BoundedTensor(x, ptb)``: ``x`` (same data, same autograd history) with ``.ptb`` attached.

    It behaves as ``x`` everywhere; the results of torch operations on it are plain tensors, except
    ``.to()``, ``.cuda()``, ``.cpu()``, ``.double()``, ``.float()``, ``.detach()`` and ``.clone()``,
    which keep the perturbation (moving its ``eps``/``x_L``/``x_U`` tensors along). Passing it to a
    ``gmbound.compat.BoundedModule`` (``model(x)`` or ``compute_bounds(x=(x,))``) sets the box that
    later ``compute_bounds`` calls bound.
    """

    ptb: Optional[PerturbationLpNorm]

    @staticmethod
    def __new__(cls, x: torch.Tensor, ptb: Optional[PerturbationLpNorm] = None):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"BoundedTensor wraps a torch.Tensor, got {type(x).__name__}")
        if ptb is not None and not isinstance(ptb, PerturbationLpNorm):
            from .errors import UnsupportedFeatureError
            raise UnsupportedFeatureError(
                f"BoundedTensor: perturbation {type(ptb).__name__} is outside gmbound.compat's subset; "
                "use gmbound.compat.PerturbationLpNorm(norm=np.inf, ...)")
        plain = x.as_subclass(torch.Tensor) if isinstance(x, BoundedTensor) else x
        out = plain.as_subclass(cls)
        out.ptb = ptb
        return out

    def __init__(self, x: torch.Tensor, ptb: Optional[PerturbationLpNorm] = None):
        pass  # everything happens in __new__; torch.Tensor.__init__ takes no arguments

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        # Operations return plain tensors: a derived tensor has no perturbation of its own.
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))

    def plain(self) -> torch.Tensor:
        """The underlying ``torch.Tensor`` (same data and autograd history), without the perturbation."""
        with torch._C.DisableTorchFunctionSubclass():
            return self.as_subclass(torch.Tensor)

    def _rewrap(self, tensor: torch.Tensor, *args, **kwargs) -> "BoundedTensor":
        ptb = self.ptb.to(*args, **kwargs) if (self.ptb is not None and (args or kwargs)) else self.ptb
        return BoundedTensor(tensor, ptb)

    def to(self, *args, **kwargs) -> "BoundedTensor":
        return self._rewrap(self.plain().to(*args, **kwargs), *args, **kwargs)

    def cuda(self, device=None, non_blocking: bool = False) -> "BoundedTensor":
        if device is None:
            target = torch.device("cuda")
        elif isinstance(device, int):
            target = torch.device("cuda", device)
        else:
            target = torch.device(device)
        return self.to(target, non_blocking=non_blocking)

    def cpu(self) -> "BoundedTensor":
        return self.to("cpu")

    def double(self) -> "BoundedTensor":
        return self.to(torch.float64)

    def float(self) -> "BoundedTensor":
        return self.to(torch.float32)

    def detach(self) -> "BoundedTensor":
        return BoundedTensor(self.plain().detach(), self.ptb)

    def clone(self, *args, **kwargs) -> "BoundedTensor":
        return BoundedTensor(self.plain().clone(*args, **kwargs), self.ptb)

    def __repr__(self, *, tensor_contents=None) -> str:
        return f"BoundedTensor({self.plain()!r}, ptb={self.ptb!r})"

    def __deepcopy__(self, memo):
        return BoundedTensor(copy.deepcopy(self.plain(), memo), copy.deepcopy(self.ptb, memo))

    def __reduce_ex__(self, proto):
        return BoundedTensor, (self.plain().detach().clone(), self.ptb)


class BoundedParameter(nn.Parameter):
    """auto_LiRPA's perturbed weight. Weight perturbation is outside gmbound's scope: building one raises.

    The name exists so that modules importing it (``from auto_LiRPA import BoundedParameter``) load.
    """

    def __new__(cls, data=None, ptb=None, requires_grad: bool = True):
        from .errors import UnsupportedFeatureError
        raise UnsupportedFeatureError("BoundedParameter (weight perturbation) is outside gmbound's scope: gmbound "
                                      "bounds perturbations of the input (BoundedTensor with PerturbationLpNorm)")

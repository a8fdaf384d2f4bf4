"""L-inf PGD (Madry et al.): the empirical counterpart of the certificates.

A sample a certificate covers must never fall to the attack; ``gmbound.evaluate`` checks it.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

LOSSES = ("ce", "margin")


def _loss(logits: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-sample loss the attack ascends: cross-entropy, or the margin ``max_{j != y} f_j - f_y``."""
    if kind == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return other - true


def _box(x: torch.Tensor, eps: torch.Tensor, x_min: Optional[float], x_max: Optional[float]):
    lo, hi = x - eps, x + eps
    if x_min is not None:
        lo = lo.clamp_min(x_min)
    if x_max is not None:
        hi = hi.clamp_max(x_max)
    return lo, hi


def pgd_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: Union[float, torch.Tensor], *,
               steps: int = 20, step_size: Optional[Union[float, torch.Tensor]] = None, restarts: int = 1,
               random_start: bool = True, x_min: Optional[float] = 0.0, x_max: Optional[float] = 1.0,
               loss: str = "ce", generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """L-inf PGD with random start and restarts, clipped to ``[x_min, x_max]``.

    ``eps``: a number or per-sample radii ``[B]``; ``step_size`` defaults to ``2.5 * eps / steps``.
    Returns ``(x_adv, success)``: ``success[b]`` is True when some iterate of some restart was
    misclassified (a clean misclassification counts), and ``x_adv[b]`` is that point (else the
    last iterate). Every returned point lies in the clipped box around ``x``. The model's
    parameters get no gradients; its train / eval mode is left as it is (call ``eval()`` first).
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if steps < 0 or restarts < 1:
        raise ValueError(f"need steps >= 0 and restarts >= 1, got {steps} and {restarts}")
    shape = (-1,) + (1,) * (x.dim() - 1)
    eps_t = torch.as_tensor(eps, dtype=x.dtype, device=x.device).detach()
    eps_t = (eps_t.expand(x.shape[0]) if eps_t.dim() == 0 else eps_t).reshape(shape)   # [B, 1, ...]
    if bool((eps_t < 0).any()):
        raise ValueError("eps must be non-negative")
    alpha = (2.5 * eps_t / max(steps, 1)) if step_size is None else (
        torch.as_tensor(step_size, dtype=x.dtype, device=x.device).expand(x.shape[0]).reshape(shape))
    lo, hi = _box(x, eps_t, x_min, x_max)
    x = x.detach()
    with torch.no_grad():
        success = model(x).argmax(1) != y
    best = x.clone()
    for _ in range(restarts):
        todo = ~success
        if not bool(todo.any()) or float(eps_t.max()) == 0.0:
            break
        idx = todo.nonzero().squeeze(1)
        xs, ys, l, h, a = x[idx], y[idx], lo[idx], hi[idx], alpha[idx]
        e = eps_t[idx]
        if random_start:
            noise = torch.rand(xs.shape, dtype=xs.dtype, device=xs.device, generator=generator) * 2 - 1
            cur = torch.max(torch.min(xs + noise * e, h), l)
        else:
            cur = xs.clone()
        found = torch.zeros(len(idx), dtype=torch.bool, device=x.device)
        found_x = cur.clone()
        for it in range(steps + 1):
            with torch.enable_grad():
                cur.requires_grad_(True)
                logits = model(cur)
                wrong = logits.argmax(1) != ys
                new = wrong & ~found
                found_x[new] = cur.detach()[new]
                found |= wrong
                if it == steps or bool(found.all()):
                    break
                grad, = torch.autograd.grad(_loss(logits, ys, loss).sum(), cur)
            cur = torch.max(torch.min(cur.detach() + a * grad.sign(), h), l)
        best[idx[found]] = found_x[found]
        last = idx[~found]
        best[last] = cur.detach()[~found]
        success[idx] = found
    return best, success

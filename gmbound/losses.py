"""The GM loss: global robustness training (GRT) with monotonically decreasing radius weights.

``L = kappa * CE(f(x), y) + (1 - kappa) * sum_i c_i CE(-m(x, r_i), y)``, ``r_i = i/N * eps``.
With ``N = 1`` it is the ordinary IBP / CROWN-IBP training loss.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .bounded import BoundedSequential
from .certificates import clean_margins, correct_mask, verified_mask
from .specification import robust_logits
from .validation import BoundInputError, DomainLike, check_count, check_labels

WeightShape = Union[str, Callable[[torch.Tensor], torch.Tensor]]

# c_i as a function of the relative radius t_i = r_i / eps = i / N. Since r_i = t_i * eps, the
# paper's c_i ~ 1/r_i is c_i ~ 1/t_i: the weights do not depend on eps (and stay defined at eps = 0).
WEIGHT_SHAPES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "inverse": lambda t: 1.0 / t,                       # the paper's monotonically decreasing choice
    "uniform": lambda t: torch.ones_like(t),            # plain GRT
    "inverse_square": lambda t: 1.0 / t ** 2,           # ablation: decreasing faster
    "linear_decreasing": lambda t: 1.0 - t + t[0],      # ablation: N, N-1, ..., 1 (scaled)
    "increasing": lambda t: t,                          # ablation control: favours the large radii
}


def gm_radii(eps: Union[float, torch.Tensor], n_radii: int, dtype: torch.dtype = torch.float32,
             device: Optional[torch.device] = None) -> torch.Tensor:
    """The GRT radii ``r_i = i/N * eps`` for ``i = 1..N``: ``[N]``."""
    n_radii = check_count(n_radii, "n_radii", "the number of radii")
    eps_t = torch.as_tensor(eps, dtype=dtype, device=device)
    if eps_t.dim() != 0:
        raise BoundInputError(f"eps must be a single number for the GM loss, got shape {tuple(eps_t.shape)}")
    if not bool(torch.isfinite(eps_t)) or float(eps_t) < 0:
        raise BoundInputError(f"eps must be finite and non-negative, got {float(eps_t)}")
    return torch.arange(1, n_radii + 1, dtype=dtype, device=device) / n_radii * eps_t


def radius_weights(n_radii: int, shape: WeightShape = "inverse", dtype: torch.dtype = torch.float32,
                   device: Optional[torch.device] = None) -> torch.Tensor:
    """The weights ``c_i`` of the N radii, normalised to sum 1: ``[N]``.

    ``shape`` is a name from ``WEIGHT_SHAPES`` or a callable mapping the relative radii
    ``t_i = i/N`` (``[N]``) to non-negative unnormalised weights.
    """
    n_radii = check_count(n_radii, "n_radii", "the number of radii")
    if isinstance(shape, str):
        if shape not in WEIGHT_SHAPES:
            raise BoundInputError(f"unknown weight shape {shape!r}; choose one of {sorted(WEIGHT_SHAPES)} "
                                  "or pass a callable")
        fn = WEIGHT_SHAPES[shape]
    elif callable(shape):
        fn = shape
    else:
        raise BoundInputError(f"weights must be a name or a callable, got {type(shape).__name__}")
    t = torch.arange(1, n_radii + 1, dtype=torch.float64) / n_radii
    raw = torch.as_tensor(fn(t), dtype=torch.float64)
    if raw.shape != (n_radii,):
        raise BoundInputError(f"the weight function must return {n_radii} weights, got shape {tuple(raw.shape)}")
    if not bool(torch.isfinite(raw).all()) or bool((raw < 0).any()) or float(raw.sum()) <= 0:
        raise BoundInputError(f"weights must be finite, non-negative and not all zero; got {raw.tolist()}")
    return (raw / raw.sum()).to(dtype=dtype, device=device)


@dataclass
class GMLossResult:
    """The loss and what a trainer logs, all from the passes the loss needed anyway.

    ``verified_error[i]``: fraction of the batch not certified at ``radii[i]`` (in stochastic mode,
    among the samples that drew radius ``i``; NaN if none did). ``drawn_index`` (stochastic mode
    only): the radius index each sample drew, ``[B]``.
    """

    loss: torch.Tensor
    natural_loss: torch.Tensor
    robust_loss: torch.Tensor
    natural_error: torch.Tensor
    verified_error: torch.Tensor
    radii: torch.Tensor
    weights: torch.Tensor
    logits: torch.Tensor
    drawn_index: Optional[torch.Tensor] = None


def gm_loss(model: Union[nn.Module, BoundedSequential], x: torch.Tensor, y: torch.Tensor,
            eps: Union[float, torch.Tensor], *, n_radii: int = 10, weights: WeightShape = "inverse",
            kappa: float = 0.5, beta: float = 1.0, method: str = "crown-ibp", x_min: DomainLike = None,
            x_max: DomainLike = None, stochastic: bool = False, generator: Optional[torch.Generator] = None,
            backend: str = "auto", allow_tf32: bool = False, loss_fusion: bool = False) -> GMLossResult:
    """GM-CROWN-IBP (``method="crown-ibp"``) or GM-IBP (``method="ibp"``) loss of one batch.

    ``kappa`` weighs the natural loss, ``beta`` mixes CROWN-IBP with IBP bounds, ``weights``
    shapes ``c_i``. ``stochastic=True`` draws one radius index per sample with probability
    ``c_i``: the same expected loss as the weighted sum at the cost of a single radius.
    ``allow_tf32=True`` lets the bounds and their gradients use TF32 products on the GPU (faster
    training; the verified errors reported are then not certificates).

    ``loss_fusion=True`` (auto_LiRPA's loss fusion, for the GM loss): the robust term at ``r_i`` is
    ``BoundedSequential.fused_cross_entropy``, an upper bound of ``max CE(f(x'), y)`` over the box from
    one CROWN-IBP row per (radius, sample) instead of ``n - 1`` margin rows: with ``z_j = f_j - f_y``,
    ``CE = log sum_j exp(z_j)``; exp lies below its chord on the IBP interval ``[l_j, u_j]`` of ``z_j``, so
    the sum is below one linear function of ``f``, bounded by one back-substitution. The paper's
    ``CE(-m, y) = log(1 + sum_{j != y} exp(-m_j))`` bounds the same maximum through each margin's own
    row: every ``exp(z_j)`` at its own worst point (the sum of the maxima, not the maximum of the sum)
    but without the chord's gap. So fusion is tighter where the intervals of ``z`` are narrow (the
    chord is then close to exp) and the classes' worst points differ; looser where IBP's intervals are
    wide (large eps, untrained nets: on a random DM-small at eps 0.3 the fused term is 32.0 against
    18.5). On the trained Table-3 GM-CROWN-IBP net it was the tighter one on 92-100 % of test images
    at every radius 0.05-0.5 (benchmarks/RESULTS.md). ``beta`` mixes the two upper bounds of
    ``sum_j exp(z_j)`` (CROWN-IBP chord and IBP), ``beta S_CROWN + (1 - beta) S_IBP``, as auto_LiRPA's
    trainers do; with ``beta = 0`` or ``method="ibp"`` the fused term is ``log(1 + sum_j exp(u_j))``,
    exactly ``CE(-m_IBP, y)``: the same loss and cost as without fusion. ``verified_error`` then counts
    a sample verified when its IBP margins are all positive or its fused bound is below ``log 2``
    (``p_y > 1/2`` everywhere in the box): sound, but it can miss what the CROWN-IBP margins certify.
    """
    if not 0.0 <= float(kappa) <= 1.0:
        raise BoundInputError(f"kappa must lie in [0, 1], got {float(kappa)}")
    net = model if isinstance(model, BoundedSequential) else BoundedSequential(model)
    if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] == 0:
        raise BoundInputError("x is an empty batch (B = 0): the GM loss, a mean over the batch, is undefined")
    radii = gm_radii(eps, n_radii, x.dtype, x.device)
    c = radius_weights(n_radii, weights, x.dtype, x.device)
    if float(radii[-1]) == 0.0:
        # eps = 0 (warm-up): the box is the point x, so m is the clean margin and
        # CE(-m, y) = CE(f(x) - f_y(x), y) = CE(f(x), y) exactly (softmax is shift-invariant).
        # The same checks on x, y and the domain as at eps > 0 (labels out of range are refused here too).
        x, _, _, _ = net._prepare(x, radii, x_min, x_max)
        logits = net(x)
        if logits.dim() != 2:
            raise BoundInputError(f"the GM loss needs logits [B, n_classes]; the model outputs {tuple(logits.shape)}")
        check_labels(y, x, logits.shape[1])
        natural_loss = F.cross_entropy(logits, y)
        natural_error = (~correct_mask(logits, y)).to(x.dtype).mean()
        # verified at radius 0: every clean margin > 0 (a tie or a NaN logit certifies nothing)
        unverified = (~verified_mask(clean_margins(logits, y))).to(x.dtype).mean()
        return GMLossResult(natural_loss, natural_loss, natural_loss, natural_error.detach(),
                            unverified.detach().expand(n_radii).clone(), radii, c, logits)
    if loss_fusion:
        index = None
        eval_radii = radii
        if stochastic:
            index = torch.multinomial(c, x.shape[0], replacement=True, generator=generator)  # [B]
            eval_radii = radii[index].unsqueeze(0)                                           # [1, B]
        fused = net.fused_cross_entropy(x, y, eval_radii, method=method, beta=beta, x_min=x_min, x_max=x_max,
                                        backend=backend, allow_tf32=allow_tf32)
        logits = fused.logits
        # certified: IBP margins all > 0, or the worst-case CE below log 2 (then p_y > 1/2: y is the arg max)
        unverified = ~((fused.ibp_max_z < 0) | (fused.bound < math.log(2)))
        unverified = unverified.to(x.dtype)
        if stochastic:
            robust_loss = fused.bound[0].mean()
            counts = torch.bincount(index, minlength=n_radii).to(x.dtype)
            sums = torch.zeros(n_radii, dtype=x.dtype, device=x.device).index_add_(0, index, unverified[0])
            verified_error = sums / counts
        else:
            robust_loss = (c * fused.bound.mean(1)).sum()
            verified_error = unverified.mean(1)
    elif stochastic:
        index = torch.multinomial(c, x.shape[0], replacement=True, generator=generator)  # [B]
        sample_radii = radii[index].unsqueeze(0)                                         # [1, B]
        logits, margins = net.logits_and_margins(x, y, sample_radii, method=method, beta=beta,
                                                 x_min=x_min, x_max=x_max, backend=backend,
                                                 allow_tf32=allow_tf32)
        n_classes = logits.shape[1]
        robust_loss = F.cross_entropy(robust_logits(margins[0], y, n_classes), y)
        unverified = (~verified_mask(margins[0])).to(x.dtype)                           # [B]; NaN: unverified
        counts = torch.bincount(index, minlength=n_radii).to(x.dtype)
        sums = torch.zeros(n_radii, dtype=x.dtype, device=x.device).index_add_(0, index, unverified)
        verified_error = sums / counts  # NaN where no sample drew the radius
    else:
        logits, margins = net.logits_and_margins(x, y, radii, method=method, beta=beta,
                                                 x_min=x_min, x_max=x_max, backend=backend,
                                                 allow_tf32=allow_tf32)
        n_classes = logits.shape[1]
        ce = F.cross_entropy(robust_logits(margins, y, n_classes).flatten(0, 1), y.repeat(n_radii),
                             reduction="none").view(n_radii, -1).mean(1)                 # [N]
        robust_loss = (c * ce).sum()
        verified_error = (~verified_mask(margins)).to(x.dtype).mean(1)
    natural_loss = F.cross_entropy(logits, y)
    natural_error = (~correct_mask(logits, y)).to(x.dtype).mean()
    loss = kappa * natural_loss + (1 - kappa) * robust_loss
    return GMLossResult(loss, natural_loss, robust_loss, natural_error.detach(), verified_error.detach(),
                        radii, c, logits, index if stochastic else None)

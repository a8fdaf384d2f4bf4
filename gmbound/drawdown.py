"""Drawdown curves over a fine radius grid without bounding or attacking every radius.

Two facts about the L-inf boxes ``B(x, r) = [max(x - r, x_min), min(x + r, x_max)]`` (nested:
``r <= r'`` gives ``B(x, r) ⊆ B(x, r')``, clipping included):

* a certificate at radius ``r`` covers every smaller radius, so per sample and verifier it is
  enough to find one certified grid radius ``r*`` and report "certified at every grid radius
  ``<= r*``". ``largest_certified_index`` finds it by a K-ary search over the grid (binary for
  ``k = 1``: about ``log2(G)`` bound calls instead of ``G``). The search only ever keeps a
  radius at which the verifier *did* certify, so the answer is sound whether or not the
  verifier is monotone in ``r``. IBP is monotone (interval bounds of nested boxes are nested),
  so there the answer equals the exhaustive grid's. CROWN-IBP is not (its intermediate IBP
  bounds change the relaxation), so a direct call may fail at a radius below ``r*`` (the search
  then certifies more than the exhaustive grid there), or succeed at an isolated radius above
  the first failure that the search never probes (it then certifies less there). The search
  always reaches at least the first failure: every radius below the smallest uncertified one.
* an adversarial point found at radius ``r`` (inside ``B(x, r)``, misclassified) lies in every
  larger box, so ``pgd_sweep`` attacks a sample only until it breaks and carries the point up.
  A sample certified at ``r`` cannot break there (if the bound is sound), so the sweep may skip
  it; ``gmbound.evaluate`` then checks the certificates with one attack per sample at its
  largest certified radius instead (the "audit").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from .attacks import pgd_attack

# certify_at(samples [b], radius indices [K, b]) -> [K, b] bool: certified by a direct bound call
CertifyAt = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def largest_certified_index(certify_at: CertifyAt, lo: torch.Tensor, hi: torch.Tensor, *, k: int = 1) -> torch.Tensor:
    """Per sample, the index of a certified grid radius found by a K-ary search in ``(lo, hi)``.

    ``lo[b]``: -1 or an index already certified by a direct call; ``hi[b]``: the grid size or an
    index already found uncertified (``lo < hi``). Each round bounds ``k`` indices per open
    sample (one call); ``lo`` moves to the largest certified probe, ``hi`` to the smallest
    uncertified probe above it, until ``hi == lo + 1``. Returns ``lo`` ``[B]`` (long; -1: none).
    Invariant (whatever the verifier): the returned index was certified by a direct call, and
    every index below the first uncertified one is ``<=`` it.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    lo, hi = lo.clone().long(), hi.clone().long()
    if bool((lo >= hi).any()):
        raise ValueError("every search bracket needs lo < hi")
    j = torch.arange(1, k + 1, device=lo.device)[:, None]                 # [K, 1]
    while True:
        open_ = hi - lo > 1
        if not bool(open_.any()):
            return lo
        idx = open_.nonzero().squeeze(1)
        l, h = lo[idx], hi[idx]
        # evenly spaced probes strictly inside (l, h): p_K < h always; small j may land on l
        probes = torch.maximum(l + ((h - l) * j) // (k + 1), l + 1)       # [K, b]
        ok = certify_at(idx, probes).to(lo.device)                        # [K, b]
        new_lo = torch.maximum(torch.where(ok, probes, torch.full_like(probes, -1)).amax(0), l)
        above = ~ok & (probes > new_lo)
        new_hi = torch.minimum(torch.where(above, probes, torch.full_like(probes, torch.iinfo(torch.long).max))
                               .amin(0), h)
        lo[idx], hi[idx] = new_lo, new_hi


def certified_matrix(index: torch.Tensor, n_radii: int) -> torch.Tensor:
    """``[N, B]`` bool from per-sample largest certified indices ``[B]``: certified at every index ``<=`` it."""
    return torch.arange(n_radii, device=index.device)[:, None] <= index[None]


@dataclass
class PgdSweep:
    """What the sweep found, per sample: ``broken [N, B]`` (misclassified, clean or by an attack,
    at that radius: once broken, broken at every larger one), ``broken_at [B]`` (first such radius
    index, -1: never), ``x_adv`` (the misclassified point behind it; ``x`` where never broken)
    and ``attacks`` (how many sample-radius attacks ran)."""

    broken: torch.Tensor
    broken_at: torch.Tensor
    x_adv: torch.Tensor
    attacks: int


def pgd_sweep(model: nn.Module, x: torch.Tensor, y: torch.Tensor, grid: Sequence[float], *,
              clean_wrong: torch.Tensor, attack_at: Optional[Sequence[bool]] = None,
              skip: Optional[torch.Tensor] = None, steps: int = 20, restarts: int = 1,
              step_size: Optional[float] = None, loss: str = "ce", x_min: Optional[float] = 0.0,
              x_max: Optional[float] = 1.0, generator: Optional[torch.Generator] = None) -> PgdSweep:
    """L-inf PGD over the ascending ``grid``, attacking each sample only until it breaks.

    ``clean_wrong [B]``: misclassified clean samples, broken at every radius. ``attack_at [N]``:
    the radii PGD runs at (default all). ``skip [N, B]``: sample-radius pairs not to attack
    (certified ones; None: attack every unbroken sample). A point found at radius ``r`` lies in
    the clipped box of every larger radius, so it stays the sample's adversarial point upward.

    The attacks run in waves: each wave attacks every unbroken sample at *its own* next radius
    (per-sample radii in one call). Every sample meets the same radii in the same order as in a
    radius-by-radius loop, but samples whose certified radii differ share calls, so the few
    samples left to attack at each radius are not run in batches of a handful. Without ``skip``
    the waves are the radii. Deterministic given ``generator``'s state.
    """
    n, b = len(grid), x.shape[0]
    attack_at = [True] * n if attack_at is None else list(attack_at)
    dev = x.device
    radii = torch.tensor(grid, dtype=x.dtype, device=dev)
    # candidates [N, B]: radius i is attacked for sample b if PGD runs there and the pair is not skipped
    cand = (torch.tensor(attack_at, device=dev) & (radii > 0))[:, None].expand(n, b).clone()
    if steps <= 0:
        cand[:] = False
    if skip is not None:
        cand &= ~skip.to(dev)
    rows = torch.arange(n, device=dev)[:, None]
    broken_at = torch.where(clean_wrong.to(dev), 0, -1).to(dtype=torch.long)
    cursor = torch.zeros(b, dtype=torch.long, device=dev)          # radii below it are done, per sample
    x_adv = x.detach().clone()
    attacks = 0
    while True:
        live = cand & (rows >= cursor[None]) & (broken_at < 0)[None]
        todo = live.any(0)
        if not bool(todo.any()):
            break
        idx = todo.nonzero().squeeze(1)
        at = live[:, idx].long().argmax(0)                            # each sample's next radius index
        adv, ok = pgd_attack(model, x[idx], y[idx], radii[at], steps=steps, step_size=step_size, restarts=restarts,
                             x_min=x_min, x_max=x_max, loss=loss, generator=generator)
        attacks += len(idx)
        broken_at[idx[ok]] = at[ok]
        x_adv[idx[ok]] = adv[ok]
        cursor[idx] = at + 1
    broken = (broken_at >= 0)[None] & (rows >= broken_at[None])
    return PgdSweep(broken.cpu(), broken_at.cpu(), x_adv, attacks)

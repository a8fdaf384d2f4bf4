"""Per-sample largest certified radius, by a K-ary bisection on the multi-radius engine.

Each round bounds K radii per sample in one call (per-sample radii ``[K, B]``), spaced evenly
inside each sample's bracket ``(lo, hi)``; ``lo`` moves to the largest radius certified, ``hi``
to the smallest uncertified radius above it. The bracket shrinks by ``K + 1`` per round.

Soundness does not depend on the bound being monotone in the radius: ``lo`` only ever takes a
radius at which the verifier *did* certify the sample, and the box of a smaller radius lies
inside that box, so the sample is robust at every radius up to the reported one.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from .bounded import BoundedSequential
from .certificates import correct_mask, count_nonfinite, warn_nonfinite
from .evaluate import certified


@torch.no_grad()
def certify_batch(net: BoundedSequential, x: torch.Tensor, y: torch.Tensor, verifier: str, eps_max: float, *,
                  rounds: int = 4, k: int = 8, x_min: Optional[float] = 0.0, x_max: Optional[float] = 1.0,
                  backend: str = "auto", crown_batch_size: int = 32) -> torch.Tensor:
    """Largest certified radius per sample ``[B]``: -1 where not certified even at radius 0
    (misclassified), ``eps_max`` where certified at ``eps_max`` (the search cap)."""
    b = x.shape[0]
    dt, dev = x.dtype, x.device
    kw = dict(x_min=x_min, x_max=x_max, backend=backend, radii_chunk=max(k, 2), crown_batch_size=crown_batch_size)
    ends = torch.tensor([0.0, eps_max], dtype=dt, device=dev)
    c = certified(net, x, y, ends, verifier, **kw)                         # [2, B]
    lo = torch.where(c[0], torch.zeros(b, dtype=dt, device=dev), torch.full((b,), -1.0, dtype=dt, device=dev))
    lo = torch.where(c[1], torch.full_like(lo, eps_max), lo)
    hi = torch.full((b,), eps_max, dtype=dt, device=dev)
    frac = torch.arange(1, k + 1, dtype=dt, device=dev) / (k + 1)        # [K]
    for _ in range(rounds):
        open_ = (lo >= 0) & (lo < hi)
        if not bool(open_.any()):
            break
        idx = open_.nonzero().squeeze(1)
        l, h = lo[idx], hi[idx]
        r = l[None] + (h - l)[None] * frac[:, None]                       # [K, b]
        ok = certified(net, x[idx], y[idx], r, verifier, **kw)              # [K, b]
        new_lo = torch.where(ok, r, torch.full_like(r, -1.0)).amax(0)
        new_lo = torch.maximum(new_lo, l)
        above = (~ok) & (r > new_lo[None])
        new_hi = torch.where(above, r, torch.full_like(r, float("inf"))).amin(0)
        new_hi = torch.minimum(new_hi, h)
        lo[idx], hi[idx] = new_lo, new_hi
    return lo


@dataclass
class CertifyResult:
    labels: list[int]
    correct: list[bool]
    radii: dict[str, list[float]]          # per verifier (and "best"): largest certified radius per sample
    eps_max: float
    rounds: int
    k: int
    seconds: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def curve(self, name: str, grid: Sequence[float]) -> list[float]:
        """Certified accuracy at each radius of ``grid``: fraction of samples with radius >= r."""
        rad = torch.tensor(self.radii[name], dtype=torch.float64)
        return [float((rad >= r - 1e-12).double().mean()) for r in grid]

    def resolution(self) -> float:
        return self.eps_max / (self.k + 1) ** self.rounds


def certify(model: nn.Module, loader: DataLoader, *, verifiers: Sequence[str] = ("crown-ibp",),
            eps_max: float = 0.5, rounds: int = 4, k: int = 8, x_min: Optional[float] = 0.0,
            x_max: Optional[float] = 1.0, device: Optional[torch.device] = None,
            dtype: torch.dtype = torch.float32, backend: str = "auto", crown_batch_size: int = 32) -> CertifyResult:
    """Largest certified radius of every sample by each verifier, and the best of them (``"best"``)."""
    import time

    device = device or next(model.parameters()).device
    model = model.to(device=device, dtype=dtype).eval()
    net = BoundedSequential(model)
    radii: dict[str, list[float]] = {v: [] for v in verifiers}
    labels, correct = [], []
    nonfinite = 0
    seconds = {v: 0.0 for v in verifiers}
    for x, y in loader:
        x, y = x.to(device=device, dtype=dtype), y.to(device)
        with torch.no_grad():
            logits = model(x)
        correct += correct_mask(logits, y).cpu().tolist()  # NaN logits are wrong (and certify nothing)
        nonfinite += count_nonfinite(logits)
        labels += y.cpu().tolist()
        for v in verifiers:
            t0 = time.time()
            r = certify_batch(net, x, y, v, eps_max, rounds=rounds, k=k, x_min=x_min, x_max=x_max, backend=backend,
                              crown_batch_size=crown_batch_size)
            seconds[v] += time.time() - t0
            radii[v] += r.cpu().tolist()
    warn_nonfinite(nonfinite, len(labels), "gmbound certify")
    radii["best"] = [max(vals) for vals in zip(*(radii[v] for v in verifiers))]
    return CertifyResult(labels, correct, radii, eps_max, rounds, k, {v: round(s, 3) for v, s in seconds.items()},
                         {"dtype": str(dtype).replace("torch.", ""), "nonfinite_logits": nonfinite})


def write_certify(result: CertifyResult, folder: str | Path, stem: str, label: str,
                  grid_step: Optional[float] = None) -> dict[str, Path]:
    """Per-sample CSV, curve CSV, JSON summary and PNG of certified accuracy against radius."""
    from .plots import plot_certified_accuracy

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = list(result.radii)
    paths = {"samples": folder / f"{stem}_radii.csv", "curve": folder / f"{stem}_curve.csv",
             "json": folder / f"{stem}.json", "png": folder / f"{stem}.png"}
    with open(paths["samples"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "label", "correct"] + [f"radius_{n}" for n in names])
        for i, (lab, ok) in enumerate(zip(result.labels, result.correct)):
            w.writerow([i, lab, int(ok)] + [f"{result.radii[n][i]:.6g}" for n in names])
    step = grid_step or result.eps_max / 100
    n_steps = int(round(result.eps_max / step))
    grid = [round(i * step, 10) for i in range(n_steps + 1)]
    curves = {n: result.curve(n, grid) for n in names}
    with open(paths["curve"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["radius"] + [f"certified_accuracy_{n}" for n in names])
        for i, r in enumerate(grid):
            w.writerow([f"{r:g}"] + [f"{curves[n][i]:.6g}" for n in names])
    summary = {"label": label, "n_samples": len(result.labels), "clean_accuracy":
               sum(result.correct) / max(len(result.correct), 1), "eps_max": result.eps_max,
               "rounds": result.rounds, "k": result.k, "resolution": result.resolution(),
               "seconds": result.seconds, "meta": result.meta, "radius": grid, "certified_accuracy": curves,
               "median_radius": {n: sorted(result.radii[n])[len(result.radii[n]) // 2] for n in names}}
    with open(paths["json"], "w") as f:
        json.dump(summary, f, indent=1)
    plot_certified_accuracy([{"radius": grid, "certified_accuracy": curves[n], "label": f"{label}: {n}"}
                             for n in names], paths["png"], title="certified accuracy (largest certified radius)")
    return paths

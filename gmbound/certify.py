"""Per-sample largest certified radius, by a K-ary bisection on the multi-radius engine.

Each round bounds K radii per sample in one call (per-sample radii ``[K, B]``), spaced evenly
inside each sample's bracket ``(lo, hi)``; ``lo`` moves to the largest radius certified, ``hi``
to the smallest uncertified radius above it. The bracket shrinks by ``K + 1`` per round. The
search itself is ``gmbound.drawdown.largest_certified_index`` (shared with ``gmbound eval``),
run here on a grid of ``(K + 1) ** rounds`` steps up to ``eps_max``.

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
from .drawdown import largest_certified_index
from .evaluate import certified


@torch.no_grad()
def certify_batch(net: BoundedSequential, x: torch.Tensor, y: torch.Tensor, verifier: str, eps_max: float, *,
                  rounds: int = 4, k: int = 8, x_min: Optional[float] = 0.0, x_max: Optional[float] = 1.0,
                  backend: str = "auto", crown_batch_size: int = 32) -> torch.Tensor:
    """Largest certified radius per sample ``[B]``: -1 where not certified even at radius 0
    (misclassified), ``eps_max`` where certified at ``eps_max`` (the search cap).

    The search of ``gmbound.drawdown.largest_certified_index`` on the implicit grid
    ``i * eps_max / (k + 1) ** rounds``: its ``k`` probes per round split the bracket evenly,
    so it ends after ``rounds`` rounds with the bracket one grid step wide.
    """
    b = x.shape[0]
    dt, dev = x.dtype, x.device
    kw = dict(x_min=x_min, x_max=x_max, backend=backend, radii_chunk=max(k, 2), crown_batch_size=crown_batch_size)
    n = (k + 1) ** rounds                                                  # grid steps up to eps_max

    def radius(i: torch.Tensor) -> torch.Tensor:  # float64 first: n can exceed float32's integers
        return (i.double() * (eps_max / n)).to(dt)

    ends = certified(net, x, y, radius(torch.tensor([0, n], device=dev)), verifier, **kw)       # [2, B]
    # brackets: (-1, 0) closed for the uncertified at 0, (n, n + 1) for the certified at eps_max
    lo = torch.where(ends[1], n, torch.where(ends[0], 0, -1)).to(device=dev, dtype=torch.long)
    hi = torch.where(ends[1], n + 1, torch.where(ends[0], n, 0)).to(device=dev, dtype=torch.long)
    top = largest_certified_index(lambda s, p: certified(net, x[s], y[s], radius(p), verifier, **kw), lo, hi, k=k)
    return torch.where(top >= 0, radius(top.clamp_min(0)), torch.full((b,), -1.0, dtype=dt, device=dev))


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

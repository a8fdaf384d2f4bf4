"""Figures (matplotlib, Agg backend): drawdown curves (the paper's Fig. 3) and certified-accuracy curves."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_drawdown(results: Sequence[Mapping[str, Any]], path: str | Path, title: Optional[str] = None,
                  per_verifier: bool = False) -> Path:
    """Verified error (solid; best of the verifiers run) and total error under PGD (dashed) against
    eps, one colour per model. ``results``: eval JSON dicts (``EvalResult.to_dict()``)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, res in enumerate(results):
        c = colours[k % len(colours)]
        label = res.get("meta", {}).get("label") or f"model {k + 1}"
        verifiers = ", ".join(res.get("verified_error", {}).keys()) or "?"
        eps = res["eps"]
        ax.plot(eps, [100 * v for v in res["verified_error_any"]], "-", color=c, lw=2,
                label=f"{label}: verified (any of {verifiers})")
        attacked = [(e, v) for e, v in zip(eps, res["pgd_error"]) if v is not None and v == v]  # PGD radii only
        ax.plot([e for e, _ in attacked], [100 * v for _, v in attacked], "--", color=c, lw=1.5,
                marker="." if len(attacked) < len(eps) else None, label=f"{label}: PGD (total)")
        if per_verifier:
            for style, (v, errs) in zip((":", "-.", (0, (1, 3))), res.get("verified_error", {}).items()):
                ax.plot(eps, [100 * e for e in errs], linestyle=style, color=c, lw=1, alpha=0.7,
                        label=f"{label}: verified ({v})")
    ax.set_xlabel(r"$\epsilon_{eval}$ ($\ell_\infty$, pixels in [0, 1])")
    ax.set_ylabel("error (%)")
    return _finish(plt, fig, ax, path, title, legend=dict(fontsize=7, loc="upper left"))


def plot_certified_accuracy(curves: Sequence[Mapping[str, Any]], path: str | Path,
                            title: Optional[str] = None) -> Path:
    """Certified accuracy against radius. ``curves``: dicts with ``radius``, ``certified_accuracy``
    (lists) and ``label``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for curve in curves:
        ax.plot(curve["radius"], [100 * a for a in curve["certified_accuracy"]], lw=2, label=curve["label"])
    ax.set_xlabel(r"radius $r$ ($\ell_\infty$, pixels in [0, 1])")
    ax.set_ylabel("certified accuracy (%)")
    return _finish(plt, fig, ax, path, title, legend=dict(fontsize=8))


def _finish(plt, fig, ax, path: str | Path, title: Optional[str], legend: dict) -> Path:
    """Percent axis, grid, title and legend; write the PNG (creating its folder) and close the figure."""
    ax.set_ylim(0, 101)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    ax.legend(**legend)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

"""Evaluation over a grid of radii: standard, verified (per verifier) and PGD error.

For every radius of the grid, on a test set:

* ``verified_error[v]``: the fraction of samples that verifier ``v`` (``ibp``, ``crown-ibp``,
  ``crown``) does *not* certify; the multi-radius engine bounds a chunk of radii per call.
* ``verified_error_any``: a sample counts as verified when *any* verifier certifies it (every
  certificate is sound, so the best of them is); ``best_verifier`` names the single verifier
  with the lowest error at that radius.
* ``pgd_error``: misclassified, or misclassified by L-inf PGD at that radius (an adversarial
  point at a radius is also one at every larger radius, so samples already broken are not
  attacked again).

Two ways to get there (``radius_search`` in the output says which ran):

* ``exhaustive=False`` (default): per sample and verifier, the largest certified grid radius by
  bisection over the grid (``gmbound.drawdown``: about ``log2(G)`` bound calls instead of ``G``);
  the sample counts as certified at every radius up to it (a certificate covers every smaller
  box). For IBP this equals the exhaustive grid; for CROWN-IBP and CROWN, whose bounds are not
  monotone in the radius, it is equally sound but can differ either way: more where a direct
  call fails below the radius found, fewer where it misses an isolated certificate above the
  first uncertified radius (both seen on MNIST, at a few samples per radius). PGD attacks a sample at a radius
  only while it is neither broken nor certified there; each certified sample is then attacked
  once at its largest certified radius (the audit, ``pgd_audit``) to test the certificate.
* ``exhaustive=True``: every verifier bounds every radius, PGD attacks every unbroken sample
  at every PGD radius, certified or not.

A sample that is certified and yet misclassified (clean or by PGD) proves a bound unsound:
``evaluate`` counts these per verifier and radius and raises ``UnsoundBoundError`` (after the
results are written, when called through the CLI) unless ``strict=False``.
"""
from __future__ import annotations

import csv
import json
import math
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from .attacks import pgd_attack
from .bounded import BoundedSequential
from .certificates import correct_mask, count_nonfinite, verified_mask, warn_nonfinite
from .drawdown import certified_matrix, largest_certified_index, pgd_sweep
from .specification import margin_spec

VERIFIER_ORDER = ("ibp", "crown-ibp", "crown")


class UnsoundBoundError(RuntimeError):
    """A certified sample was misclassified (by PGD or on the clean input): a bound is not sound."""


def relu_neurons(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Number of ReLU outputs of the model for one input of ``input_shape`` (``[C, H, W]``).

    Counted on the bound graph, so functional ReLUs (``F.relu``) of a traced model count too.
    """
    from .network import build_graph

    graph = build_graph(model)
    shapes = graph.infer_shapes(tuple(input_shape))
    return sum(math.prod(shapes[i]) for i in graph.relus(graph.ancestors([graph.output])))


def _radius_chunks(radii: torch.Tensor, chunk: int) -> Iterable[slice]:
    for s in range(0, radii.shape[0], chunk):
        yield slice(s, min(radii.shape[0], s + chunk))


@torch.no_grad()
def certified(net: BoundedSequential, x: torch.Tensor, y: torch.Tensor, radii: torch.Tensor, verifier: str, *,
              x_min: Optional[float] = 0.0, x_max: Optional[float] = 1.0, backend: str = "auto",
              radii_chunk: int = 8, crown_batch_size: int = 32, crown_chunk: Optional[int] = None) -> torch.Tensor:
    """``[N, B]`` bool: sample b certified (all margin lower bounds > 0) at radius ``radii[n]``.

    ``radii``: ``[N]`` or per-sample ``[N, B]``; at most ``radii_chunk`` radii are bounded per call.
    """
    out = []
    for sl in _radius_chunks(radii, radii_chunk):
        r = radii[sl]
        if verifier == "crown":
            parts = []
            for s in range(0, x.shape[0], crown_batch_size):
                e = slice(s, s + crown_batch_size)
                xs, ys = x[e], y[e]
                rs = r[:, e] if r.dim() == 2 else r
                n_classes = net(xs[:1]).shape[1]
                spec = margin_spec(ys, n_classes, dtype=x.dtype)
                lb = net.bounds(xs, rs, spec, method="crown", x_min=x_min, x_max=x_max, bound_upper=False,
                                backend=backend, crown_chunk=crown_chunk).lower
                parts.append(verified_mask(lb))
            out.append(torch.cat(parts, 1))
        else:
            margins = net.margin_bounds(x, y, r, method=verifier, beta=1.0, x_min=x_min, x_max=x_max,
                                        backend=backend)
            out.append(verified_mask(margins))
    return torch.cat(out, 0)


@dataclass
class EvalResult:
    """Errors (fractions) over the grid ``eps``; lists are aligned with ``eps``."""

    eps: list[float]
    n_samples: int
    standard_error: float
    verified_error: dict[str, list[float]]
    verified_error_any: list[float]
    best_verifier: list[str]
    pgd_error: list[float]
    unsound: dict[str, list[int]]
    skipped_verifiers: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    pgd: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    radius_search: dict[str, Any] = field(default_factory=dict)   # how the grid was covered (see module doc)

    @property
    def sound(self) -> bool:
        return not any(any(v) for v in self.unsound.values())

    def rows(self) -> list[dict[str, Any]]:
        """One CSV row per radius."""
        rows = []
        for i, e in enumerate(self.eps):
            row: dict[str, Any] = {"eps": e, "n": self.n_samples, "standard_error": self.standard_error}
            for v, errs in self.verified_error.items():
                row[f"verified_error_{v}"] = errs[i]
            row["verified_error"] = self.verified_error_any[i]
            row["best_verifier"] = self.best_verifier[i]
            row["pgd_error"] = self.pgd_error[i]
            row["unsound_samples"] = sum(u[i] for u in self.unsound.values())
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sound"] = self.sound
        # radii PGD did not attack: null in JSON (NaN is not JSON)
        d["pgd_error"] = [None if math.isnan(p) else p for p in self.pgd_error]
        return d


def evaluate(model: nn.Module, loader: DataLoader, eps_grid: Sequence[float], *,
             verifiers: Sequence[str] = ("ibp", "crown-ibp"), pgd_steps: int = 20, pgd_restarts: int = 1,
             pgd_step_size: Optional[float] = None, pgd_loss: str = "ce",
             pgd_eps_grid: Optional[Sequence[float]] = None, x_min: Optional[float] = 0.0,
             x_max: Optional[float] = 1.0, device: Optional[torch.device] = None,
             dtype: torch.dtype = torch.float32, backend: str = "auto", radii_chunk: int = 8,
             crown_batch_size: int = 32, crown_max_neurons: Optional[int] = 2000, seed: int = 0,
             exhaustive: bool = False, search_k: int = 1, pgd_audit: bool = True,
             strict: bool = True, progress: bool = False) -> EvalResult:
    """Standard, verified (per verifier and best-of) and PGD error at every radius of ``eps_grid``.

    ``exhaustive``: bound every radius and attack every unbroken sample (else bisection over the
    grid with ``search_k`` radii per sample per call, PGD only where neither certified nor broken,
    and, with ``pgd_audit``, one attack per certified sample at its largest certified radius).

    Full CROWN runs only when the model has at most ``crown_max_neurons`` ReLU neurons (None: no
    limit); otherwise it is listed in ``skipped_verifiers`` with the reason. PGD runs at the radii
    of ``pgd_eps_grid`` (None: all of ``eps_grid``; each must be on ``eps_grid``); ``pgd_error``
    is NaN at the other radii, where no attack ran. Raises
    ``UnsoundBoundError`` on any certified-but-attacked sample when ``strict``.
    """
    device = device or next(model.parameters()).device
    model = model.to(device=device, dtype=dtype).eval()
    net = BoundedSequential(model)
    grid = sorted(float(e) for e in eps_grid)
    radii = torch.tensor(grid, dtype=dtype, device=device)
    n_eps = len(grid)
    pgd_at = pgd_radii_mask(grid, pgd_eps_grid)                                # [N] bool
    active, skipped = [], {}
    for v in verifiers:
        if v not in VERIFIER_ORDER:
            raise ValueError(f"unknown verifier {v!r}; choose from {VERIFIER_ORDER}")
    for v in VERIFIER_ORDER:
        if v not in verifiers:
            continue
        if v == "crown" and crown_max_neurons is not None:
            sample = loader.dataset[0][0]
            n_relu = relu_neurons(model, tuple(sample.shape))
            if n_relu > crown_max_neurons:
                skipped[v] = (f"model has {n_relu} ReLU neurons > eval.crown_max_neurons = {crown_max_neurons}; "
                              "raise that limit to run full CROWN anyway (slow and memory-hungry)")
                continue
        active.append(v)
    wrong = 0
    total = 0
    nonfinite = 0  # samples with NaN / inf logits: misclassified, never verified, and warned about
    unverified = {v: torch.zeros(n_eps, dtype=torch.long) for v in active}
    unverified_any = torch.zeros(n_eps, dtype=torch.long)
    pgd_wrong = torch.zeros(n_eps, dtype=torch.long)
    unsound = {v: torch.zeros(n_eps, dtype=torch.long) for v in active}
    seconds = {v: 0.0 for v in active}
    seconds["pgd"] = 0.0
    audit = pgd_audit and not exhaustive and pgd_steps > 0
    if audit:
        seconds["pgd_audit"] = 0.0
    bound_evals = {v: 0 for v in active}        # sample-radius pairs bounded, per verifier
    pgd_attacks = audit_attacks = audit_broken = 0
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    batches = loader
    if progress:
        from tqdm import tqdm

        batches = tqdm(loader, desc="eval", leave=False, dynamic_ncols=True)
    for x, y in batches:
        x, y = x.to(device=device, dtype=dtype), y.to(device)
        b = len(y)
        total += b
        with torch.no_grad():
            logits = model(x)
        clean_wrong = ~correct_mask(logits, y)                                    # [B]; NaN logits are wrong
        nonfinite += count_nonfinite(logits)
        wrong += int(clean_wrong.sum())
        cert, top = {}, {}   # [N, B] certified; [B] largest certified index (bisection only)
        for v in active:
            t0 = time.time()
            ckw = dict(x_min=x_min, x_max=x_max, backend=backend, radii_chunk=radii_chunk,
                       crown_batch_size=crown_batch_size)
            if exhaustive:
                cert[v] = certified(net, x, y, radii, v, **ckw).cpu()                      # [N, B]
                bound_evals[v] += n_eps * b
            else:
                def certify_at(s, p, v=v, ckw=ckw):
                    bound_evals[v] += p.numel()
                    return certified(net, x[s], y[s], radii[p], v, **ckw)
                # a clean error is only bounded at the first radius (certified there: unsound)
                hi = torch.where(clean_wrong, 1, n_eps).to(device=device, dtype=torch.long)
                top[v] = largest_certified_index(certify_at, torch.full_like(hi, -1), hi, k=search_k).cpu()
                cert[v] = certified_matrix(top[v], n_eps)
            seconds[v] += time.time() - t0
            unverified[v] += (~cert[v]).sum(1)
        any_cert = torch.zeros(n_eps, b, dtype=torch.bool)
        for v in active:
            any_cert |= cert[v]
        unverified_any += (~any_cert).sum(1)
        # PGD, radius by radius; a sample broken at a radius stays broken at the larger ones
        t0 = time.time()
        sweep = pgd_sweep(model, x, y, grid, clean_wrong=clean_wrong, attack_at=pgd_at,
                          skip=None if exhaustive else any_cert, steps=pgd_steps, restarts=pgd_restarts,
                          step_size=pgd_step_size, loss=pgd_loss, x_min=x_min, x_max=x_max, generator=gen)
        attacked = sweep.broken                                                          # [N, B]
        pgd_attacks += sweep.attacks
        seconds["pgd"] += time.time() - t0
        pgd_wrong += attacked.sum(1)
        for v in active:  # a certificate contradicted by a misclassified point (clean or PGD) is unsound
            unsound[v] += (cert[v] & attacked).sum(1)
        if audit and active:
            # the sweep skipped certified pairs, so test each certificate once, where it is
            # hardest to keep: at the sample's largest certified radius (best verifier)
            t0 = time.time()
            best_top = torch.stack([top[v] for v in active]).amax(0)                     # [B]
            todo = ((best_top >= 0) & ~clean_wrong.cpu()).nonzero().squeeze(1)
            todo = todo[radii.cpu()[best_top[todo]] > 0]
            if len(todo):
                r = radii[best_top[todo].to(device)]
                _, ok = pgd_attack(model, x[todo.to(device)], y[todo.to(device)], r, steps=pgd_steps,
                                   step_size=pgd_step_size, restarts=pgd_restarts, x_min=x_min, x_max=x_max,
                                   loss=pgd_loss, generator=gen)
                audit_attacks += len(todo)
                hit = todo[ok.cpu()]
                audit_broken += len(hit)
                for v in active:  # contradicts the verifiers certified at that radius
                    bad = hit[top[v][hit] >= best_top[hit]]
                    unsound[v].index_add_(0, best_top[bad], torch.ones(len(bad), dtype=torch.long))
            seconds["pgd_audit"] += time.time() - t0
    warn_nonfinite(nonfinite, total, "gmbound eval")
    n = max(total, 1)
    ver = {v: (unverified[v].double() / n).tolist() for v in active}
    best = []  # the verifier(s) with the lowest error at each radius; ties joined by "="
    for i in range(n_eps):
        low = min((ver[v][i] for v in active), default=None)
        best.append("=".join(v for v in active if ver[v][i] == low))
    result = EvalResult(
        eps=grid, n_samples=total, standard_error=wrong / n, verified_error=ver,
        verified_error_any=(unverified_any.double() / n).tolist(), best_verifier=best,
        pgd_error=[p if pgd_at[i] else float("nan") for i, p in enumerate((pgd_wrong.double() / n).tolist())],
        unsound={v: unsound[v].tolist() for v in active},
        skipped_verifiers=skipped, seconds={k: round(s, 3) for k, s in seconds.items()},
        pgd={"steps": pgd_steps, "restarts": pgd_restarts, "loss": pgd_loss,
             "eps": [e for e, on in zip(grid, pgd_at) if on],
             "step_size": pgd_step_size if pgd_step_size is not None else "2.5*eps/steps",
             "random_start": True, "x_min": x_min, "x_max": x_max, "attacks": pgd_attacks},
        radius_search=_search_summary(exhaustive, search_k, bound_evals, total, n_eps, audit, audit_attacks,
                                      audit_broken),
        meta={"dtype": str(dtype).replace("torch.", ""), "device": str(device), "backend": backend,
              "nonfinite_logits": nonfinite,
              "torch": str(torch.__version__), "machine": platform.machine(), "platform": platform.platform()})
    if strict and not result.sound:
        raise UnsoundBoundError(unsound_message(result))
    return result


def _search_summary(exhaustive: bool, k: int, bound_evals: dict[str, int], n: int, n_eps: int, audit: bool,
                    audit_attacks: int, audit_broken: int) -> dict[str, Any]:
    """The ``radius_search`` record of an evaluation: mode, work done, and what it means."""
    if exhaustive:
        return {"mode": "exhaustive", "bound_evaluations": bound_evals,
                "note": "every verifier bounded every radius; PGD attacked every unbroken sample at every PGD radius"}
    return {"mode": "bisection", "k": k, "bound_evaluations": bound_evals, "exhaustive_bound_evaluations":
            n * n_eps, "pgd_audit": {"ran": audit, "attacks": audit_attacks, "broken": audit_broken},
            "note": "per sample and verifier, the largest grid radius certified by a direct bound call, found by "
                    "bisection; the sample counts as certified at every radius up to it (sound: a certificate "
                    "covers every smaller box). IBP equals the exhaustive grid; CROWN-IBP/CROWN are not "
                    "monotone in the radius: they can certify more here (below the radius found a direct call "
                    "may fail) or fewer (an isolated certificate above the first uncertified radius can be "
                    "missed). PGD skipped certified samples; the audit "
                    "attacked each certified sample at its largest certified radius"}


def pgd_radii_mask(grid: Sequence[float], pgd_eps_grid: Optional[Sequence[float]]) -> list[bool]:
    """Which radii of the (sorted) verification grid PGD attacks; each PGD radius must be on it."""
    if pgd_eps_grid is None:
        return [True] * len(grid)
    mask = [False] * len(grid)
    for p in pgd_eps_grid:
        hits = [i for i, e in enumerate(grid) if abs(e - float(p)) <= 1e-9 * max(1.0, abs(e))]
        if not hits:
            raise ValueError(f"PGD radius {float(p):g} is not on the verification grid (eval.eps_grid); "
                             "choose eval.pgd_eps_grid as a subset of it")
        mask[hits[0]] = True
    return mask


def unsound_message(result: EvalResult) -> str:
    parts = []
    for v, counts in result.unsound.items():
        bad = [(e, c) for e, c in zip(result.eps, counts) if c]
        if bad:
            parts.append(f"{v}: " + ", ".join(f"{c} sample(s) at eps={e:g}" for e, c in bad))
    return ("UNSOUND BOUND: samples certified and yet misclassified (clean or by PGD): " + "; ".join(parts)
            + ". In float32 this can be rounding at a tie; re-run with eval.dtype=float64. If it persists, "
            "the verifier has a bug: report it.")


# ----------------------------------------------------------------------------- checkpoints
def eval_loader_for(cfg: dict, subset: Optional[int], batch_size: int) -> DataLoader:
    """The test split named by a run's config (first ``subset`` samples)."""
    from .data import load_dataset

    d = cfg["data"]
    try:
        dataset = load_dataset(d["name"], d["dir"], train=False, download=d["download"])
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{err}\n(test data of the checkpoint's config: data.name = {d['name']!r}, "
                                f"data.dir = {d['dir']!r}; pass --data-dir to point elsewhere)") from None
    if subset is not None and subset < len(dataset):
        dataset = Subset(dataset, range(subset))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


def checkpoint_label(ckpt: dict, path: str | Path) -> str:
    cfg = ckpt["config"]
    return f"{cfg['train']['method']} ({cfg['name']})"


def evaluate_checkpoint(path: str | Path, ecfg: dict, *, data_dir: Optional[str] = None,
                        device: Optional[torch.device] = None, label: Optional[str] = None,
                        strict: bool = True, progress: bool = False) -> EvalResult:
    """Evaluate a training checkpoint with the ``eval`` section ``ecfg`` (see ``gmbound.config``)."""
    from .checkpoint import build_model_from_checkpoint, load_checkpoint
    from .config import parse_eps_grid

    ckpt = load_checkpoint(path)
    cfg = ckpt["config"]
    if data_dir is not None:
        cfg["data"]["dir"] = data_dir
    model = build_model_from_checkpoint(ckpt)
    mi = ckpt["model_info"]
    subset = ecfg["test_subset"] if ecfg["test_subset"] is not None else cfg["data"]["test_subset"]
    loader = eval_loader_for(cfg, subset, ecfg["batch_size"])
    dtype = torch.float64 if ecfg["dtype"] == "float64" else torch.float32
    t0 = time.time()
    result = evaluate(model, loader, parse_eps_grid(ecfg["eps_grid"]), verifiers=ecfg["verifiers"],
                      pgd_steps=ecfg["pgd_steps"], pgd_restarts=ecfg["pgd_restarts"],
                      pgd_step_size=ecfg["pgd_step_size"], pgd_loss=ecfg["pgd_loss"],
                      pgd_eps_grid=(parse_eps_grid(ecfg["pgd_eps_grid"], "eval.pgd_eps_grid")
                                    if ecfg["pgd_eps_grid"] is not None else None),
                      x_min=mi["x_min"], x_max=mi["x_max"],
                      device=device or torch.device("cpu"), dtype=dtype, backend=cfg["train"]["backend"],
                      radii_chunk=ecfg["radii_chunk"], crown_batch_size=ecfg["crown_batch_size"],
                      crown_max_neurons=ecfg["crown_max_neurons"], exhaustive=ecfg.get("exhaustive", False),
                      pgd_audit=ecfg.get("pgd_audit", True), strict=False, progress=progress)
    result.seconds["total"] = round(time.time() - t0, 3)
    t = cfg["train"]
    result.meta.update({
        "label": label or checkpoint_label(ckpt, path), "checkpoint": str(path), "method": t["method"],
        "train_eps": t["eps"], "n_radii": t["n_radii"] if t["method"].startswith("gm-") else 1,
        "weights": t["weights"] if t["method"].startswith("gm-") else None, "epochs": int(ckpt["epoch"]),
        "model": mi["name"], "dataset": cfg["data"]["name"], "test_subset": subset,
        "train_seconds": round(sum(r.get("epoch_seconds", 0.0) for r in ckpt.get("history", [])), 1),
    })
    if strict and not result.sound:
        raise UnsoundBoundError(unsound_message(result))
    return result


# ----------------------------------------------------------------------------- files
def write_result(result: EvalResult, folder: str | Path, stem: str) -> tuple[Path, Path]:
    """``<stem>.csv`` (one row per radius) and ``<stem>.json`` (everything) in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = result.rows()
    csv_path, json_path = folder / f"{stem}.csv", folder / f"{stem}.json"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0].keys()))
        w.writeheader()
        for row in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    with open(json_path, "w") as f:
        json.dump(result.to_dict(), f, indent=1, default=_json_default)
    return csv_path, json_path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def load_result(path: str | Path) -> dict[str, Any]:
    with open(path) as f:
        data = json.load(f)
    for key in ("eps", "verified_error_any", "pgd_error"):
        if key not in data:
            raise ValueError(f"{path}: not a gmbound eval JSON (no {key!r})")
    return data


def format_table(result: EvalResult, eps_values: Optional[Sequence[float]] = None) -> str:
    """A text table of errors (%) at some radii of the grid (all by default)."""
    verifiers = list(result.verified_error)
    head = ["eps"] + [f"verified({v})" for v in verifiers] + ["verified(any)", "PGD"]
    lines = ["  ".join(f"{h:>16}" for h in head)]
    for i, e in enumerate(result.eps):
        if eps_values is not None and not any(abs(e - v) < 1e-9 for v in eps_values):
            continue
        cells = [f"{e:g}"] + [f"{100 * result.verified_error[v][i]:.1f}%" for v in verifiers]
        pgd = result.pgd_error[i]
        cells += [f"{100 * result.verified_error_any[i]:.1f}%", "-" if math.isnan(pgd) else f"{100 * pgd:.1f}%"]
        lines.append("  ".join(f"{c:>16}" for c in cells))
    return "\n".join(lines)

"""GM-CROWN-IBP training step with and without loss fusion, and auto_LiRPA's loss-fusion step looped over the radii.

Variants, interleaved in one process (each warmed up once, then ``--repeats`` rounds; medians of wall and
process CPU time; at one thread the CPU time is what a step cost even on a shared machine):

* ``fused``: ``gm_loss(..., loss_fusion=True)`` on the compiled backend: per (radius, sample) the IBP
  intervals of ``f_j - f_y`` and ONE CROWN-IBP row (the chord of exp);
* ``margins``: ``gm_loss`` as before, ``K = 9`` CROWN-IBP rows (the margins) per (radius, sample);
* ``auto_LiRPA``: auto_LiRPA's own loss fusion (``CrossEntropyWrapper``, ``bound_opts={"loss_fusion": True}``,
  the IBP call and the ``"backward"`` call, ``log(ub) + max_input``), one pair of calls per radius (exact:
  all samples; stochastic: the samples that drew it), summed with the weights ``c_i``, as cifar_training.py
  does for one radius. Only with ``--lirpa PATH`` (auto_LiRPA's source; a050a3d / 0.7.1 was used).

All with kappa = 0 (the robust term alone), beta = 1, eps 0.3, inverse weights, forward and backward to the
weights. ``exact``: N = 10 radii per sample; ``stochastic``: one radius per sample, drawn with ``c_i`` (the
same draw for every variant). ``--flops`` counts the products of each gmbound variant (reference path,
under the default tile budget, so DM-large at B = 64 fits in memory; see ``bench_bounds.count_gflop``).

    python benchmarks/bench_loss_fusion.py --threads 1 --repeats 3 --flops --lirpa path/to/auto_LiRPA
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_bounds import count_gflop, device_description, git_commit, make_case, timed  # noqa: E402

import gmbound  # noqa: E402
from gmbound import cpu_allocator  # noqa: E402
from gmbound.losses import gm_radii, radius_weights  # noqa: E402

CASES = {"dm-small": 256, "dm-large": 64}
MODES = ("stochastic", "exact")
N_RADII = 10


def drawn_radii(eps: float, batch: int, mode: str, seed: int = 0) -> Optional[torch.Tensor]:
    """The radius index of every sample (stochastic GRT), the same for every variant; None for exact GRT."""
    if mode == "exact":
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.multinomial(radius_weights(N_RADII), batch, replacement=True, generator=g)


def gmbound_step(model, x, y, eps: float, mode: str, fusion: bool, backend: str) -> Callable[[], None]:
    net = gmbound.BoundedSequential(model)

    def run():
        model.zero_grad(set_to_none=True)
        g = torch.Generator().manual_seed(0)  # the same draw as drawn_radii (multinomial over c_i, B samples)
        res = gmbound.gm_loss(net, x, y, eps, n_radii=N_RADII, kappa=0.0, beta=1.0, method="crown-ibp", x_min=0.0,
                              x_max=1.0, stochastic=mode == "stochastic", generator=g, backend=backend,
                              loss_fusion=fusion)
        res.loss.backward()
        return float(res.loss)
    return run


def lirpa_step(lirpa_root: Path, model, x, y, eps: float, mode: str) -> Callable[[], None]:
    """auto_LiRPA's loss-fusion step (cifar_training.py's, beta = 1) for each radius, weighted by c_i."""
    M = importlib.import_module("auto_LiRPA")
    P = importlib.import_module("auto_LiRPA.perturbations")
    exp_node = importlib.import_module("auto_LiRPA.bound_ops").BoundExp
    wrapped = M.BoundedModule(M.CrossEntropyWrapper(model), (torch.zeros_like(x[:2]), torch.zeros(2, dtype=torch.long)),
                              bound_opts={"loss_fusion": True}, device="cpu")
    radii = gm_radii(eps, N_RADII).tolist()
    c = radius_weights(N_RADII)
    index = drawn_radii(eps, x.shape[0], mode)

    def robust_ce(xs, ys, r):
        bx = M.BoundedTensor(xs, P.PerturbationLpNorm(norm=np.inf, eps=r, x_L=(xs - r).clamp(min=0),
                                                      x_U=(xs + r).clamp(max=1)))
        wrapped(bx, ys)
        wrapped.compute_bounds(x=(bx, ys), IBP=True, C=None, method=None)
        _, ub = wrapped.compute_bounds(IBP=False, C=None, method="backward", bound_lower=False, bound_upper=True)
        shift = next(n for n in wrapped.modules() if isinstance(n, exp_node)).max_input
        return torch.log(ub) + shift  # [b, 1]

    def run():
        wrapped.train()
        for p in wrapped.parameters():
            p.grad = None
        loss = 0.0
        for i, r in enumerate(radii):
            if index is None:
                loss = loss + c[i] * robust_ce(x, y, r).mean()
            else:
                pick = (index == i).nonzero().squeeze(1)
                if len(pick):
                    loss = loss + robust_ce(x[pick], y[pick], r).sum() / x.shape[0]
        loss.backward()
        return float(loss)
    return run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--batch", type=int, default=None, help="default: 256 for dm-small, 64 for dm-large")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--flops", action="store_true", help="count the products of each gmbound variant")
    p.add_argument("--lirpa", type=Path, default=None, help="root of auto_LiRPA's source (holds auto_LiRPA/)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cpu_allocator.keep_freed_memory()  # as `gmbound train` runs
    if args.lirpa:
        from bench_compat import _load_onnx_opsets
        sys.path.insert(0, str(args.lirpa))
        _load_onnx_opsets()
    device = torch.device("cpu")
    print(f"# {datetime.datetime.now().isoformat(timespec='seconds')}; {device_description(device)}; torch "
          f"{torch.__version__}; gmbound commit {git_commit()}; {args.threads} thread(s); median of {args.repeats}; "
          f"load average at start {os.getloadavg()[0]:.1f}")
    print("| model | B | GRT | variant | robust loss | wall s / step | CPU s / step | GFLOP (products) | "
          "CPU time vs margins |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for name in args.models:
        batch = args.batch or CASES[name]
        for mode in args.modes:
            model, x, y, eps = make_case(name, batch, device)
            model.train()
            fns = {"fused": gmbound_step(model, x, y, eps, mode, True, "cpu"),
                   "margins": gmbound_step(model, x, y, eps, mode, False, "cpu")}
            if args.lirpa:
                fns["auto_LiRPA loop"] = lirpa_step(args.lirpa, model, x, y, eps, mode)
            first = {k: fn() for k, fn in fns.items()}  # warm-up; the robust loss of each variant
            times = {k: [] for k in fns}
            for rnd in range(args.repeats):
                for k, fn in fns.items():
                    times[k].append(timed(fn, device))
                    wall, cpu = times[k][-1]
                    print(f"# {name} {mode} round {rnd + 1}: {k} {wall:.3f} s wall, {cpu:.3f} s CPU", file=sys.stderr,
                          flush=True)
            gflop = {}
            if args.flops:
                for k, fusion in (("fused", True), ("margins", False)):
                    gflop[k] = count_gflop(gmbound_step(model, x, y, eps, mode, fusion, "reference"), untiled=False)
            cpu_margins = statistics.median(t[1] for t in times["margins"])
            for k in fns:
                wall = statistics.median(t[0] for t in times[k])
                cpu = statistics.median(t[1] for t in times[k])
                flop = f"{gflop[k]:.1f}" if k in gflop else "-"
                rows.append(dict(model=name, batch=batch, mode=mode, variant=k, loss=first[k], wall_s=wall, cpu_s=cpu,
                                 times=times[k], gflop=gflop.get(k)))
                print(f"| {name} | {batch} | {mode} | {k} | {first[k]:.5g} | {wall:.3f} | {cpu:.3f} | {flop} | "
                      f"{cpu_margins / cpu:.2f}x |", flush=True)
    print(f"# load average at end {os.getloadavg()[0]:.1f}")
    if args.json:
        meta = dict(date=datetime.datetime.now().isoformat(timespec="seconds"), device=device_description(device),
                    torch=torch.__version__, commit=git_commit(), threads=args.threads, repeats=args.repeats)
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

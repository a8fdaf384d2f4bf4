"""Training-step cost of leaky ReLU and max pooling on the compiled kernels, against ReLU / average pooling.

One CNN in the style of certified-training models (conv 4x4/2, act, conv 3x3, act, 2x2 pooling, linear
100, act, linear 10; MNIST-sized input), four variants: act in {ReLU, LeakyReLU(0.01)} x pooling in
{average, max}. Each variant's GM-CROWN-IBP training step (``gm_loss``, crown-ibp, beta 1, kappa 0,
N radii, forward and backward to the weights) is timed on

* ``compiled``: the backend of the tensors' device (``cpu`` here): leaky ReLU on the ReLU kernels
  (fused with the layer below), max pooling's CROWN step on its own kernel;
* ``relaxation ops``: the same backend, with leaky ReLU and max pooling sent back to the reference
  ops they ran on before they had kernels (``LeakyReLUOp``'s general range and lines with
  ``relaxation_backward``; the reference ``max_pool2d_backward``). Both paths share the choice of
  each pooling window's lines (``max_pool2d_relaxation``), which got faster with the kernels' commit,
  so this path is a little faster than the code before it was.

Variants and paths interleave in one process (one warm-up call each, then ``--repeats`` rounds);
medians of wall and process CPU time; the header names device, torch version and commit.

    python benchmarks/bench_ops.py --threads 1 --repeats 5 --out benchmarks/measurements/issue23
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import statistics
import sys
from pathlib import Path
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_bounds import device_description, git_commit, timed  # noqa: E402

import gmbound  # noqa: E402
from gmbound.engine import compiled  # noqa: E402
from gmbound.ops import nonlinear  # noqa: E402
from gmbound.reference import primitives as ref  # noqa: E402

RELAXATION_OPS_PATH_EXISTS = hasattr(nonlinear.LeakyReLUOp, "relu_slope")  # False before the kernels

ACTS = {"relu": nn.ReLU, "leaky": lambda: nn.LeakyReLU(0.01)}
POOLS = {"avg": lambda: nn.AvgPool2d(2), "max": lambda: nn.MaxPool2d(2)}
PATHS = ("compiled", "relaxation ops")


def make_model(act: str, pool: str, seed: int = 0) -> nn.Sequential:
    """conv 1->16 4x4/2 (28 -> 14), act, conv 16->32 3x3 padded (14), act, 2x2 pool (-> 7), fc 100, act, fc 10."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 16, 4, 2, 1), ACTS[act](), nn.Conv2d(16, 32, 3, 1, 1), ACTS[act](),
                         POOLS[pool](), nn.Flatten(), nn.Linear(32 * 7 * 7, 100), ACTS[act](), nn.Linear(100, 10))


@contextlib.contextmanager
def relaxation_ops_path():
    """Leaky ReLU and max pooling on the generic relaxations (the code path before their kernels)."""
    saved = nonlinear.LeakyReLUOp.relu_slope, compiled.max_pool2d_backward
    nonlinear.LeakyReLUOp.relu_slope = lambda self: None
    compiled.max_pool2d_backward = ref.max_pool2d_backward
    try:
        yield
    finally:
        nonlinear.LeakyReLUOp.relu_slope, compiled.max_pool2d_backward = saved


def step_fn(model: nn.Sequential, x, y, eps: float, n_radii: int, path: str) -> Callable[[], None]:
    net = gmbound.BoundedSequential(model)

    def run():
        with (relaxation_ops_path() if path == "relaxation ops" else contextlib.nullcontext()):
            model.zero_grad(set_to_none=True)
            res = gmbound.gm_loss(net, x, y, eps, n_radii=n_radii, kappa=0.0, beta=1.0, method="crown-ibp",
                                  x_min=0.0, x_max=1.0, backend="auto")
            res.loss.backward()
    return run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--n-radii", type=int, default=10)
    ap.add_argument("--eps", type=float, default=0.3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS),
                    help="'compiled' alone on a checkout from before the kernels (that is its code path there)")
    ap.add_argument("--out", type=Path, default=None, help="folder for results.json and results.md")
    args = ap.parse_args(argv)
    if "relaxation ops" in args.paths and not RELAXATION_OPS_PATH_EXISTS:
        ap.error("this checkout has no leaky ReLU / max-pool kernels: its 'compiled' path is the relaxation ops; "
                 "use --paths compiled")
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (args.batch,), generator=g)
    runs = {}
    for act in ACTS:
        for pool in POOLS:
            model = make_model(act, pool)
            for path in args.paths:
                if path == "relaxation ops" and (act, pool) == ("relu", "avg"):
                    continue  # nothing to send back: the same code as "compiled"
                runs[(act, pool, path)] = step_fn(model, x, y, args.eps, args.n_radii, path)
    for fn in runs.values():
        fn()  # warm-up
    samples = {key: ([], []) for key in runs}
    for _ in range(args.repeats):
        for key, fn in runs.items():
            wall, cpu = timed(fn, device)
            samples[key][0].append(wall)
            samples[key][1].append(cpu)
    rows = [{"act": a, "pool": p, "path": path, "wall_s": statistics.median(w), "cpu_s": statistics.median(c),
             "wall_all": w, "cpu_all": c} for (a, p, path), (w, c) in samples.items()]
    base = next(r for r in rows if (r["act"], r["pool"]) == ("relu", "avg"))
    header = {"device": device_description(device), "torch": torch.__version__, "commit": git_commit(),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "batch": args.batch, "n_radii": args.n_radii, "eps": args.eps, "repeats": args.repeats,
              "threads": args.threads}
    lines = [f"# bench_ops: {header['device']}, torch {header['torch']}, commit {header['commit']}, {header['date']}",
             f"GM-CROWN-IBP step (crown-ibp, beta 1, N = {args.n_radii}, B = {args.batch}), forward + backward; "
             f"medians of {args.repeats}", "",
             "| act | pool | path | wall s | CPU s | vs relu+avg compiled (CPU) | speed-up of compiled (CPU) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        other = next((o for o in rows if (o["act"], o["pool"]) == (r["act"], r["pool"]) and o is not r), None)
        speedup = f"{other['cpu_s'] / r['cpu_s']:.2f}x" if other is not None and r["path"] == "compiled" else ""
        lines.append(f"| {r['act']} | {r['pool']} | {r['path']} | {r['wall_s']:.3f} | {r['cpu_s']:.3f} | "
                     f"{r['cpu_s'] / base['cpu_s']:.2f}x | {speedup} |")
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps({"header": header, "rows": rows}, indent=1))
        (args.out / "results.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""gmbound.compat against auto_LiRPA on the training steps of auto_LiRPA's own example trainers.

The five runs of the drop-in issue, each as the step its script takes (batch 64, one process, the two
libraries interleaved, a warm-up round not counted):

* ``simple_training.py`` (MNIST shape): ``cnn_7layer_bn`` and ``resnet`` from the examples' own
  ``models`` package, ``--bound_type IBP`` (one IBP call) and ``CROWN-IBP`` (the IBP call, then a
  ``"backward"`` call on the same input, mixed 0.5 / 0.5), cross-entropy of the margins, backward;
* ``cifar_training.py`` (CIFAR shape): ``cnn_7layer_bn`` in a ``CrossEntropyWrapper`` with loss
  fusion, the IBP and the backward call, ``log(ub) + max_input``, backward.

Inputs are random images of those shapes (no data set is read). Reported: the first step's loss of
each library (relative difference), and the median wall and process-CPU seconds of a step; at one
thread the CPU time is what the step cost even on a shared machine.

auto_LiRPA is not a dependency: pass the root of its source (``--lirpa``; a050a3d / 0.7.1 was used),
whose ``examples/vision/models`` provides the models. auto_LiRPA 0.7.1 supports torch < 2.9; on newer
torch its ONNX-based tracing turns ``torch.gather`` into OneHot unless the newer opset symbolics are
loaded first, which this script does (``_load_onnx_opsets``).

    python benchmarks/bench_compat.py --lirpa path/to/auto_LiRPA --repeats 5 --threads 1
"""
from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_bounds import device_description, git_commit  # noqa: E402

LIBS = ("auto_LiRPA", "gmbound.compat")
CASES = ("cnn_7layer_bn IBP", "cnn_7layer_bn CROWN-IBP", "resnet IBP", "resnet CROWN-IBP",
         "cifar cnn_7layer_bn loss-fusion")
BATCH = 64


def _load_onnx_opsets() -> None:
    """Import torch's ONNX opset 10-20 symbolics, which auto_LiRPA 0.7.1's tracing needs on torch >= 2.9."""
    for version in range(10, 21):
        try:
            importlib.import_module(f"torch.onnx._internal.torchscript_exporter.symbolic_opset{version}")
        except ImportError:
            return  # an older torch registers them itself


def cifar_cnn_7layer_bn(width: int = 64, linear: int = 512) -> nn.Sequential:
    """The CIFAR ``cnn_7layer_bn`` of auto_LiRPA's cifar_training.py (3 x 32 x 32 inputs, 10 classes)."""
    layers: list[nn.Module] = []
    for c_in, c_out, stride in ((3, width, 1), (width, width, 1), (width, 2 * width, 2), (2 * width, 2 * width, 1),
                                (2 * width, 2 * width, 1)):
        layers += [nn.Conv2d(c_in, c_out, 3, stride, 1), nn.BatchNorm2d(c_out), nn.ReLU()]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(16 * 16 * 2 * width, linear), nn.ReLU(), nn.Linear(linear, 10))


def margin_spec(y: torch.Tensor, n: int = 10) -> torch.Tensor:
    """Rows ``e_y - e_j`` for ``j != y`` (``[B, n - 1, n]``), as the example scripts build C."""
    eye = torch.eye(n)
    c = eye[y].unsqueeze(1) - eye.unsqueeze(0)
    keep = y.unsqueeze(1) != torch.arange(n).unsqueeze(0)
    return c[keep].view(len(y), n - 1, n)


def simple_step(lib, model, x: torch.Tensor, c: torch.Tensor, bound: str, eps: float = 0.1) -> torch.Tensor:
    M, P = lib
    bx = M.BoundedTensor(x, P.PerturbationLpNorm(norm=np.inf, eps=eps, x_L=(x - eps).clamp(min=0),
                                                 x_U=(x + eps).clamp(max=1)))
    model.train()
    model(bx)
    lb, _ = model.compute_bounds(IBP=True, C=c, method=None)
    if bound == "CROWN-IBP":  # the scripts' pair: IBP, then "backward" reusing its intermediate bounds
        clb, _ = model.compute_bounds(IBP=False, C=c, method="backward", bound_upper=False)
        lb = 0.5 * clb + 0.5 * lb
    zeros = torch.zeros(len(x), 1)
    return nn.functional.cross_entropy(-torch.cat([zeros, lb], 1), torch.zeros(len(x), dtype=torch.long))


def fusion_step(lib, model, x: torch.Tensor, y: torch.Tensor, eps: float = 0.01) -> torch.Tensor:
    M, P = lib
    exp_node = importlib.import_module(M.__name__ + ".bound_ops").BoundExp
    bx = M.BoundedTensor(x, P.PerturbationLpNorm(norm=np.inf, eps=eps, x_L=x - eps, x_U=x + eps))
    model.train()
    model(bx, y)
    _, iub = model(method_opt="compute_bounds", x=(bx, y), IBP=True, C=None, method=None, no_replicas=True)
    _, cub = model(method_opt="compute_bounds", IBP=False, C=None, method="backward", bound_lower=False,
                   bound_upper=True, no_replicas=True)
    shift = model(get_property=True, node_class=exp_node, att_name="max_input")
    return torch.mean(torch.log(cub * 0.5 + iub * 0.5) + shift)


def build(case: str, lib_name: str, example_models) -> tuple[nn.Module, Callable[[], torch.Tensor]]:
    """The bounded model of ``case`` in library ``lib_name`` and its step (same seed for both libraries)."""
    M = importlib.import_module(lib_name)
    lib = (M, importlib.import_module(lib_name + ".perturbations"))
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    opts = {"activation_bound_option": None}
    if case.startswith("cifar"):
        x, y = torch.randn(BATCH, 3, 32, 32, generator=g), torch.randint(0, 10, (BATCH,), generator=g)
        model = M.BoundDataParallel(M.BoundedModule(
            M.CrossEntropyWrapper(cifar_cnn_7layer_bn()), (torch.zeros(2, 3, 32, 32), torch.zeros(1, dtype=torch.long)),
            bound_opts=dict(opts, loss_fusion=True), device="cpu"))
        return model, lambda: fusion_step(lib, model, x, y)
    name, bound = case.split()
    x, y = torch.rand(BATCH, 1, 28, 28, generator=g), torch.randint(0, 10, (BATCH,), generator=g)
    model = M.BoundedModule(example_models.Models[name](in_ch=1, in_dim=28), torch.zeros(2, 1, 28, 28),
                            bound_opts=opts, device="cpu")
    c = margin_spec(y)
    return model, lambda: simple_step(lib, model, x, c, bound)


def run_case(case: str, example_models, repeats: int) -> dict:
    built = {lib: build(case, lib, example_models) for lib in LIBS}
    times: dict[str, list[tuple[float, float]]] = {lib: [] for lib in LIBS}
    first_loss = {}
    for rep in range(repeats + 1):  # round 0 warms up (and gives the first step's loss)
        for lib in LIBS:
            model, step = built[lib]
            w0, c0 = time.perf_counter(), time.process_time()
            loss = step()
            loss.backward()
            w1, c1 = time.perf_counter(), time.process_time()
            for p in model.parameters():
                p.grad = None
            if rep == 0:
                first_loss[lib] = loss.item()
            else:
                times[lib].append((w1 - w0, c1 - c0))
    med = {lib: (statistics.median(t[0] for t in times[lib]), statistics.median(t[1] for t in times[lib]))
           for lib in LIBS}
    a, b = first_loss[LIBS[0]], first_loss[LIBS[1]]
    return dict(case=case, loss=(a, b), rel=abs(a - b) / max(abs(a), 1e-30), wall=(med[LIBS[0]][0], med[LIBS[1]][0]),
                cpu=(med[LIBS[0]][1], med[LIBS[1]][1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lirpa", required=True, type=Path, help="root of auto_LiRPA's source (holds auto_LiRPA/ and examples/)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES, metavar="CASE")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(args.lirpa))
    sys.path.insert(0, str(args.lirpa / "examples" / "vision"))
    _load_onnx_opsets()
    example_models = importlib.import_module("models")
    print(f"# {device_description(torch.device('cpu'))}; torch {torch.__version__}; gmbound commit {git_commit()}; "
          f"batch {BATCH}; median of {args.repeats}; load average at start {os.getloadavg()[0]:.1f}")
    print("| run | first-step loss, auto_LiRPA / gmbound (relative difference) | wall s per step | CPU s per step | "
          "speed-up (CPU) |")
    print("|---|---|---|---|---|")
    for case in args.cases:
        r = run_case(case, example_models, args.repeats)
        print(f"| {r['case']} | {r['loss'][0]:.7g} / {r['loss'][1]:.7g} ({r['rel']:.1e}) | {r['wall'][0]:.3f} / "
              f"{r['wall'][1]:.3f} | {r['cpu'][0]:.3f} / {r['cpu'][1]:.3f} | {r['cpu'][0] / r['cpu'][1]:.2f}x |",
              flush=True)
    print(f"# load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

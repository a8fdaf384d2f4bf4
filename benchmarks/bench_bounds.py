"""Bound throughput of gmbound's backends: IBP and CROWN-IBP bounds, and one GM-CROWN-IBP training step.

For every model, number of radii N and backend (reference, cpu, cuda: those available) it times

* ``ibp`` / ``crown-ibp``: margin lower bounds of the standard specification (rows e_y - e_j)
  for N radii r_i = i/N * eps, under ``torch.no_grad()``; throughput in (sample, radius) bounds/s;
* ``gm-train``: ``gmbound.gm_loss`` with CROWN-IBP (beta = 1), kappa = 0 (the robust part alone:
  sum_i c_i CE(-m_i with 0 at y, y), c_i ~ 1/r_i) and its backward to the weights; samples/s.

Each case is warmed up once per backend, then timed ``--repeats`` times with the backends
interleaved (so a busy machine slows them alike); the median is reported with its ratio to the
reference. Besides wall time, the process CPU time of each call is kept (``cpu ms``): at one
thread it is what the call cost, even when other jobs share the cores (wall time then includes
waiting for a core).

Options beyond the grid:

* ``--lirpa``: add the baseline "a per-radius loop over auto_LiRPA" (CROWN-IBP with its default
  adaptive slopes, one ``compute_bounds`` per radius; the GM loss summed over the loop), when
  ``auto_LiRPA`` imports (put its source on PYTHONPATH; it is not a dependency of gmbound);
* ``--flops``: count the floating-point operations of the products of the gm-train step (the
  reference path under ``torch.utils.flop_counter``, in the compiled step's tiles: every convolution
  and matrix product of the bound pass and of its backward, 2 per multiply-add, with torch's FLOP
  formulas) and report
  each backend's rate as a fraction of a large (2048^3) sgemm's rate, measured in the same rounds as
  the steps (per CPU second and per wall second; ``--peak-gflops`` adds a given peak);
* a summary of cost(N) / cost(N = 1) per model, task, backend and batch (when N = 1 was run). Peak memory: ``torch.cuda.max_memory_allocated`` on GPU; on CPU the peak of the C heap
in use above its level before the call (glibc ``mallinfo2``, sampled every millisecond: an
estimate that can miss very short peaks; "n/a" where glibc is not there).

    python benchmarks/bench_bounds.py                       # all models, N = 1, 4, 10
    python benchmarks/bench_bounds.py --quick               # a small smoke run
    python benchmarks/bench_bounds.py --models dm-large --batch 8 --n-radii 10 --tasks gm-train
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch

import gmbound
from gmbound import _extension, cpu_allocator
from gmbound.engine import compiled_available
from gmbound.losses import gm_radii
from gmbound.models import build_model

HERE = os.path.dirname(os.path.abspath(__file__))

# name -> (model, in_channels, in_size, eps, normalize)
MODELS = {
    "dm-small": ("dm-small", 1, 28, 0.3, None),
    "dm-large": ("dm-large", 1, 28, 0.3, None),
    "cifar-dm-large": ("dm-large", 3, 32, 8 / 255, ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))),
}
TASKS = ("ibp", "crown-ibp", "gm-train")


@dataclass
class Result:
    model: str
    n_radii: int
    task: str
    backend: str
    batch: int
    median_s: float
    times_s: list
    throughput: float  # bounds/s (ibp, crown-ibp) or samples/s (gm-train)
    unit: str
    peak_mem_mb: Optional[float]
    ratio_vs_reference: Optional[float] = None
    cpu_median_s: Optional[float] = None  # process CPU time (all threads) of one call, median
    cpu_times_s: Optional[list] = None
    gflop: Optional[float] = None          # FLOPs of the step's products (--flops), in 1e9
    sgemm_cpu_gflops: Optional[float] = None   # a 2048^3 sgemm timed in the same rounds (--flops): per CPU second
    sgemm_wall_gflops: Optional[float] = None  # ... and per wall second


# ----------------------------------------------------------------------------- environment
def git_commit() -> str:
    try:
        sha = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, text=True,
                                      stderr=subprocess.DEVNULL).strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", ":/csrc", ":/gmbound"], cwd=HERE,
                               stderr=subprocess.DEVNULL).returncode != 0
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"{cpu_name()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


# ----------------------------------------------------------------------------- memory
class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _heap_reader() -> Optional[Callable[[], int]]:
    """Bytes in use on the C heap (all arenas + mmapped blocks), from glibc's mallinfo2; None elsewhere."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2

    def read() -> int:
        info = fn()
        return info.uordblks + info.hblkhd
    return read


class HeapSampler:
    """Peak heap in use (bytes) above the starting level, sampled every ``period`` seconds.

    torch's CPU tensors live on the C heap, so this follows their allocations; a peak shorter than
    the period can be missed, so it is an estimate (lower bound).
    """

    def __init__(self, read: Callable[[], int], period: float = 0.001):
        self.read, self.period = read, period
        self._stop = threading.Event()

    def __enter__(self):
        self.base = self.peak = self.read()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.read())
            time.sleep(self.period)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.read())

    @property
    def increase_mb(self) -> float:
        return (self.peak - self.base) / 2 ** 20


_HEAP = _heap_reader()


def timed(fn: Callable[[], None], device: torch.device) -> tuple[float, float]:
    """Wall and process CPU seconds for one call (the GPU synchronised before and after)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t, c = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t, time.process_time() - c


def peak_memory_mb(fn: Callable[[], None], device: torch.device) -> Optional[float]:
    """Peak memory of one call above the level before it (a separate, untimed call: the CPU sampler
    thread would disturb the timing)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20
    if _HEAP is None:
        return None
    with HeapSampler(_HEAP) as heap:
        fn()
    return heap.increase_mb


# ----------------------------------------------------------------------------- the work
def make_case(name: str, batch: int, device: torch.device, seed: int = 0):
    arch, channels, size, eps, normalize = MODELS[name]
    torch.manual_seed(seed)
    model = build_model(arch, channels, size, normalize=normalize).to(device)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((batch, channels, size, size), generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    return model, x, y, eps


def task_fn(task: str, model, x, y, eps: float, n_radii: int, backend: str,
            allow_tf32: bool = False) -> Callable[[], None]:
    net = gmbound.BoundedSequential(model)
    radii = gm_radii(eps, n_radii, x.dtype, x.device)
    if task in ("ibp", "crown-ibp"):
        model.eval()

        def run():
            with torch.no_grad():
                net.margin_bounds(x, y, radii, method=task, beta=1.0, x_min=0.0, x_max=1.0, backend=backend,
                                  allow_tf32=allow_tf32)
        return run
    if task == "gm-train":
        model.train()

        def run():
            model.zero_grad(set_to_none=True)
            res = gmbound.gm_loss(net, x, y, eps, n_radii=n_radii, weights="inverse", kappa=0.0, beta=1.0,
                                  method="crown-ibp", x_min=0.0, x_max=1.0, backend=backend, allow_tf32=allow_tf32)
            res.loss.backward()
        return run
    raise ValueError(f"unknown task {task!r}")


def lirpa_available() -> bool:
    try:
        import auto_LiRPA  # noqa: F401
    except Exception:  # not installed, or its optional dependencies are missing
        return False
    return True


def lirpa_task_fn(task: str, model, x, y, eps: float, n_radii: int) -> Callable[[], None]:
    """The baseline: one auto_LiRPA CROWN-IBP (or IBP) bound per radius, as a user without gmbound writes it."""
    from auto_LiRPA import BoundedModule, BoundedTensor
    from auto_LiRPA.perturbations import PerturbationLpNorm

    from gmbound.losses import radius_weights
    from gmbound.specification import margin_spec, robust_logits

    lirpa = BoundedModule(model, torch.zeros_like(x[:1]), device=x.device)
    radii = gm_radii(eps, n_radii, x.dtype, x.device)
    weights = radius_weights(n_radii, "inverse", x.dtype, x.device)
    n_classes = 10
    spec = margin_spec(y, n_classes, dtype=x.dtype)

    def margins(r: float) -> torch.Tensor:
        ptb = PerturbationLpNorm(norm=float("inf"), eps=r, x_L=(x - r).clamp(0, 1), x_U=(x + r).clamp(0, 1))
        bx = BoundedTensor(x, ptb)
        if task == "ibp":
            lb, _ = lirpa.compute_bounds(x=(bx,), C=spec, IBP=True, method=None, bound_upper=False)
        else:
            lb, _ = lirpa.compute_bounds(x=(bx,), C=spec, IBP=True, method="backward", bound_upper=False)
        return lb

    if task in ("ibp", "crown-ibp"):
        model.eval()

        def run():
            with torch.no_grad():
                for r in radii.tolist():
                    margins(r)
        return run
    model.train()

    def run():
        model.zero_grad(set_to_none=True)
        loss = 0.0
        for i, r in enumerate(radii.tolist()):
            lb = margins(r)
            loss = loss + weights[i] * torch.nn.functional.cross_entropy(robust_logits(lb, y, n_classes), y)
        loss.backward()
    return run


def count_step_gflop(model, x, y, eps: float, n_radii: int) -> float:
    """FLOPs (1e9) of the convolutions and matrix products of one GM-CROWN-IBP step, forward and backward.

    Counted on the reference path with ``torch.utils.flop_counter`` (2 FLOPs per multiply-add), in the
    tiles the compiled step runs in (what it recomputes per tile, the clean logits and the first layer's
    centre, included; a tile's memory instead of the whole step's): the products the step does; the
    element-wise work around them is not counted.
    """
    return count_gflop(task_fn("gm-train", model, x, y, eps, n_radii, "reference"), untiled=False)


def count_gflop(fn: Callable[[], None], untiled: bool = True) -> float:
    """FLOPs (1e9) of the convolutions and matrix products ``fn()`` runs (see ``count_step_gflop``).

    ``untiled=False`` counts under the default tile budget: the same products in pieces, plus what each
    tile recomputes (the clean logits, the first layer's centre); it needs a tile's memory, not the step's.
    """
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    from gmbound.engine import set_tile_budget

    class Count(TorchDispatchMode):
        # torch's FlopCounterMode also installs a global module hook, which gmbound refuses to
        # bound through (it could change a layer's output); this counts with the same formulas.
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            packet = func._overloadpacket
            if packet in flop_registry:
                Count.total += flop_registry[packet](*args, **kwargs, out_val=out)
            return out

    set_tile_budget(0 if untiled else None)
    try:
        with Count():
            fn()
    finally:
        set_tile_budget(None)
    return Count.total / 1e9


def available_backends(device: torch.device, wanted: Optional[list[str]], lirpa: bool = False) -> list[str]:
    backends = ["reference"]
    if compiled_available(device.type):
        backends.append(device.type)
    if lirpa:
        if lirpa_available():
            backends.append("auto_lirpa")
        else:
            print("auto_LiRPA does not import: the per-radius auto_LiRPA loop is skipped")
    if wanted:
        backends = [b for b in backends if b in wanted]
    return backends


def with_tile_budget(fn: Callable[[], None], megabytes: float) -> Callable[[], None]:
    """``fn`` run under a tile budget of ``megabytes`` (0: untiled, the engine before tiling)."""
    from gmbound.engine import set_tile_budget

    def run():
        set_tile_budget(int(megabytes * 2 ** 20))
        try:
            fn()
        finally:
            set_tile_budget(None)
    return run


def run_case(name, n_radii, task, batch, device, backends, repeats, flops: bool = False,
             tile_mb: Optional[list[float]] = None, allow_tf32: bool = False) -> list[Result]:
    model, x, y, eps = make_case(name, batch, device)
    fns = {}
    for b in backends:
        if b == "auto_lirpa":
            fns[b] = lirpa_task_fn(task, model, x, y, eps, n_radii)
        elif tile_mb:  # one variant per tile budget, named backend@budget
            for t in tile_mb:
                fns[f"{b}@{t:g}MB"] = with_tile_budget(task_fn(task, model, x, y, eps, n_radii, b, allow_tf32), t)
        else:
            fns[b] = task_fn(task, model, x, y, eps, n_radii, b, allow_tf32)
    backends = list(fns)
    for fn in fns.values():  # warm-up: allocator, oneDNN / cuDNN algorithm choice, lazy init
        fn()
    times = {b: [] for b in backends}
    cpu = {b: [] for b in backends}
    probe = flops and task == "gm-train" and device.type == "cpu"
    sgemm_rates: list[tuple[float, float]] = []
    for _ in range(repeats):
        for b in backends:  # interleaved, so background load hits all backends alike
            wall, proc = timed(fns[b], device)
            times[b].append(wall)
            cpu[b].append(proc)
        if probe:  # the denominator of the FLOP rates, measured in the same rounds as the steps
            sgemm_rates.append(sgemm_gflops(repeats=3))
    gflop = count_step_gflop(model, x, y, eps, n_radii) if flops and task == "gm-train" else None
    sgemm_wall = statistics.median(r[0] for r in sgemm_rates) if sgemm_rates else None
    sgemm_cpu = statistics.median(r[1] for r in sgemm_rates) if sgemm_rates else None
    results = []
    for b in backends:
        med = statistics.median(times[b])
        work = batch * n_radii if task != "gm-train" else batch
        unit = "bounds/s" if task != "gm-train" else "samples/s"
        results.append(Result(name, n_radii, task, b, batch, med, times[b], work / med, unit,
                              peak_memory_mb(fns[b], device), cpu_median_s=statistics.median(cpu[b]),
                              cpu_times_s=cpu[b], gflop=gflop, sgemm_cpu_gflops=sgemm_cpu,
                              sgemm_wall_gflops=sgemm_wall))
    for r in results:  # against the reference at the same tile budget (or the plain reference)
        suffix = r.backend[r.backend.index("@"):] if "@" in r.backend else ""
        ref = next((q for q in results if q.backend == "reference" + suffix), None)
        ref = ref or next((q for q in results if q.backend.startswith("reference")), None)
        r.ratio_vs_reference = ref.median_s / r.median_s if ref is not None else None
    return results


# ----------------------------------------------------------------------------- output
def format_row(r: Result) -> str:
    ratio = f"{r.ratio_vs_reference:5.2f}x" if r.ratio_vs_reference is not None else "   -  "
    mem = f"{r.peak_mem_mb:9.1f}" if r.peak_mem_mb is not None else "      n/a"
    cpu_ms = f"{r.cpu_median_s * 1e3:9.1f}" if r.cpu_median_s is not None else "      n/a"
    return (f"{r.model:15s} {r.n_radii:3d} {r.task:10s} {r.backend:16s} {r.median_s * 1e3:11.1f} {cpu_ms} "
            f"{r.throughput:12.1f} {r.unit:10s} {ratio} {mem}")


HEADER = (f"{'model':15s} {'N':>3s} {'task':10s} {'backend':16s} {'median ms':>11s} {'cpu ms':>9s} "
          f"{'throughput':>12s} {'unit':10s} {'ratio':>6s} {'peak MB':>9s}")


def markdown(results: list[Result]) -> str:
    lines = ["| model | N | task | backend | batch | median ms | cpu ms | throughput | vs reference | peak MB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        ratio = f"{r.ratio_vs_reference:.2f}x" if r.ratio_vs_reference is not None else "-"
        mem = f"{r.peak_mem_mb:.0f}" if r.peak_mem_mb is not None else "n/a"
        cpu_ms = f"{r.cpu_median_s * 1e3:.1f}" if r.cpu_median_s is not None else "n/a"
        lines.append(f"| {r.model} | {r.n_radii} | {r.task} | {r.backend} | {r.batch} | {r.median_s * 1e3:.1f} | "
                     f"{cpu_ms} | {r.throughput:.1f} {r.unit} | {ratio} | {mem} |")
    return "\n".join(lines)


def scaling_lines(results: list[Result]) -> list[str]:
    """cost(N) / cost(N = 1) for every model, task, backend and batch that ran N = 1 (wall and CPU time)."""
    lines = []
    base = {(r.model, r.task, r.backend, r.batch): r for r in results if r.n_radii == 1}
    for r in results:
        b = base.get((r.model, r.task, r.backend, r.batch))
        if b is None or r.n_radii == 1:
            continue
        cpu = (f", CPU time {r.cpu_median_s / b.cpu_median_s:.2f}x"
               if r.cpu_median_s and b.cpu_median_s else "")
        lines.append(f"{r.model:15s} {r.task:10s} {r.backend:16s} batch {r.batch:4d}: cost(N={r.n_radii}) = "
                     f"{r.median_s / b.median_s:.2f} x cost(N=1) wall{cpu}")
    return lines


SGEMM_SIZE = 2048


def sgemm_gflops(repeats: int = 5) -> tuple[float, float]:
    """GFLOP/s of a 2048^3 float32 matrix product at the current thread count: per wall and per CPU second (medians).

    The ceiling the FLOP rates of ``--flops`` are read against: the clock the cores really run at is not
    visible in a VM without cycle counters (cpuinfo gives the nominal one), and a large sgemm is the
    fastest dense FP32 work the BLAS does on this machine, under the same load as the steps."""
    a, b = torch.randn(SGEMM_SIZE, SGEMM_SIZE), torch.randn(SGEMM_SIZE, SGEMM_SIZE)
    a @ b
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = timed(lambda: a @ b, torch.device("cpu"))
        walls.append(wall)
        cpus.append(cpu)
    flop = 2 * SGEMM_SIZE ** 3 / 1e9
    return flop / statistics.median(walls), flop / statistics.median(cpus)


def flop_lines(results: list[Result], threads: int, peak_gflops: Optional[float] = None, how: str = "") -> list[str]:
    """Each step's FLOP rate as a fraction of the large-sgemm rate measured in the same rounds.

    Per CPU second (what one step cost; at one thread robust to other jobs on the machine) and per wall
    second (against the sgemm's wall rate at the same thread count). ``peak_gflops`` (given with
    ``--peak-gflops``): also the fraction of that FP32 peak, flagged where a measured rate exceeds it.
    """
    lines = []
    if peak_gflops:
        lines.append(f"FP32 peak given: {peak_gflops:.1f} GFLOP/s on {threads} thread(s) {how}".rstrip())
    rates = []
    for r in results:
        if r.gflop is None:
            continue
        wall = r.gflop / r.median_s
        line = f"{r.model:15s} N={r.n_radii:<3d} {r.backend:16s} batch {r.batch:4d}: {r.gflop:.1f} GFLOP"
        if r.cpu_median_s:
            cpu = r.gflop / r.cpu_median_s
            rates.append(cpu)
            line += f" in {r.cpu_median_s:.3f} s CPU = {cpu:.1f} GFLOP per CPU second"
            if r.sgemm_cpu_gflops:
                line += f" = {100 * cpu / r.sgemm_cpu_gflops:.1f} % of the sgemm's {r.sgemm_cpu_gflops:.1f}"
        line += f"; in {r.median_s:.3f} s wall = {wall:.1f} GFLOP/s"
        if r.sgemm_wall_gflops:
            line += f" = {100 * wall / r.sgemm_wall_gflops:.1f} % of the sgemm's {r.sgemm_wall_gflops:.1f}"
        if peak_gflops:
            line += f" = {100 * wall / peak_gflops:.1f} % of the given peak"
        lines.append(line)
    if any(r.sgemm_cpu_gflops for r in results):
        lines.append(f"(sgemm: a {SGEMM_SIZE}^3 float32 matmul timed 3 times in every round of each case, between "
                     f"the steps; medians)")
        rates += [r.sgemm_cpu_gflops for r in results if r.sgemm_cpu_gflops]
    if peak_gflops and rates and max(rates) > peak_gflops / max(1, threads):
        lines.append(f"warning: {max(rates):.1f} GFLOP per CPU second was measured above one core's share of the "
                     f"given peak ({peak_gflops / max(1, threads):.1f}): the peak is too low")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--n-radii", nargs="+", type=int, default=[1, 4, 10])
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--backends", nargs="+", default=None, choices=["reference", "cpu", "cuda", "auto_lirpa"],
                   help="default: every backend available for the device")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=None, help="default: 32 on GPU, 8 on CPU")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per backend (median reported)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU")
    p.add_argument("--quick", action="store_true", help="smoke run: dm-small, N = 1 and 4, batch 2, 1 repeat")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--markdown", action="store_true", help="also print a markdown table")
    p.add_argument("--lirpa", action="store_true",
                   help="also time a per-radius loop over auto_LiRPA (when it imports; CPU/GPU alike)")
    p.add_argument("--tile-mb", nargs="+", type=float, default=None,
                   help="time each gmbound backend at these tile budgets (MB; 0 = untiled), interleaved")
    p.add_argument("--flops", action="store_true",
                   help="count the FLOPs of the gm-train step's products and report the fraction of peak")
    p.add_argument("--peak-gflops", type=float, default=None,
                   help="also report the fraction of this FP32 peak (GFLOP/s for all threads); the default "
                        "denominator is a large sgemm measured in the same run")
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="CPU: let glibc keep freed memory for reuse, as `gmbound train` does "
                        "(gmbound.cpu_allocator); off by default, as a program using the library gets it")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    kept = args.keep_freed_memory and device.type == "cpu" and cpu_allocator.keep_freed_memory()
    if args.quick:
        args.models, args.n_radii, args.repeats = ["dm-small"], [1, 4], 1
        args.batch = args.batch or 2
    batch = args.batch or (32 if device.type == "cuda" else 8)
    if device.type == "cuda":
        # exact float32 products: TF32 would change the bounds (and can break soundness)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False

    backends = available_backends(device, args.backends + ["auto_lirpa"] if args.backends else None, args.lirpa)
    print(f"gmbound bound benchmark  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"device: {device_description(device)}")
    print(f"torch {torch.__version__}, python {platform.python_version()}, gmbound commit {git_commit()}")
    ext = "loaded" if _extension.available() else f"missing ({_extension.unavailable_reason()})"
    print(f"extension gmbound._C: {ext}; backends: {', '.join(backends)}")
    print(f"batch {batch}, repeats {args.repeats} (median), float32, eps: MNIST 0.3, CIFAR 8/255, clipped to [0, 1]")
    if device.type == "cpu":
        print(f"freed memory kept for reuse (gmbound.cpu_allocator): {'yes' if kept else 'no'}")
    if os.cpu_count() and device.type == "cpu":
        try:
            print(f"load average at start: {os.getloadavg()[0]:.2f}")
        except OSError:
            pass
    print()
    print(HEADER)
    results: list[Result] = []
    for name in args.models:
        for n in args.n_radii:
            for task in args.tasks:
                for r in run_case(name, n, task, batch, device, backends, args.repeats, args.flops, args.tile_mb):
                    results.append(r)
                    print(format_row(r), flush=True)
    scaling = scaling_lines(results)
    if scaling:
        print()
        print("\n".join(scaling))
    if args.flops and device.type == "cpu":
        print()
        print("\n".join(flop_lines(results, torch.get_num_threads(), args.peak_gflops)))
    if args.markdown:
        print()
        print(markdown(results))
    if args.json:
        meta = dict(date=datetime.datetime.now().isoformat(timespec="seconds"), device=device_description(device),
                    torch=torch.__version__, commit=git_commit(), batch=batch, repeats=args.repeats)
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, results=[asdict(r) for r in results]), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

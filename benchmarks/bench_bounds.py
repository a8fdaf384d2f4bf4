"""Bound throughput of gmbound's backends: IBP and CROWN-IBP bounds, and one GM-CROWN-IBP training step.

For every model, number of radii N and backend (reference, cpu, cuda: those available) it times

* ``ibp`` / ``crown-ibp``: margin lower bounds of the standard specification (rows e_y - e_j)
  for N radii r_i = i/N * eps, under ``torch.no_grad()``; throughput in (sample, radius) bounds/s;
* ``gm-train``: ``gmbound.gm_loss`` with CROWN-IBP (beta = 1), kappa = 0 (the robust part alone:
  sum_i c_i CE(-m_i with 0 at y, y), c_i ~ 1/r_i) and its backward to the weights; samples/s.

Each case is warmed up once per backend, then timed ``--repeats`` times with the backends
interleaved (so a busy machine slows them alike); the median is reported with its ratio to the
reference. Peak memory: ``torch.cuda.max_memory_allocated`` on GPU; on CPU the peak of the C heap
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
from gmbound import _extension
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


# ----------------------------------------------------------------------------- environment
def git_commit() -> str:
    try:
        sha = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, text=True,
                                      stderr=subprocess.DEVNULL).strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "csrc", "gmbound"], cwd=HERE,
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


def timed(fn: Callable[[], None], device: torch.device) -> float:
    """Seconds for one call (the GPU synchronised before and after)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t


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


def available_backends(device: torch.device, wanted: Optional[list[str]]) -> list[str]:
    backends = ["reference"]
    if compiled_available(device.type):
        backends.append(device.type)
    if wanted:
        backends = [b for b in backends if b in wanted]
    return backends


def run_case(name, n_radii, task, batch, device, backends, repeats, allow_tf32: bool = False) -> list[Result]:
    model, x, y, eps = make_case(name, batch, device)
    fns = {b: task_fn(task, model, x, y, eps, n_radii, b, allow_tf32) for b in backends}
    for fn in fns.values():  # warm-up: allocator, oneDNN / cuDNN algorithm choice, lazy init
        fn()
    times = {b: [] for b in backends}
    for _ in range(repeats):
        for b in backends:  # interleaved, so background load hits all backends alike
            times[b].append(timed(fns[b], device))
    results = []
    for b in backends:
        med = statistics.median(times[b])
        work = batch * n_radii if task != "gm-train" else batch
        unit = "bounds/s" if task != "gm-train" else "samples/s"
        results.append(Result(name, n_radii, task, b, batch, med, times[b], work / med, unit,
                              peak_memory_mb(fns[b], device)))
    ref = next((r for r in results if r.backend == "reference"), None)
    for r in results:
        r.ratio_vs_reference = ref.median_s / r.median_s if ref is not None else None
    return results


# ----------------------------------------------------------------------------- output
def format_row(r: Result) -> str:
    ratio = f"{r.ratio_vs_reference:5.2f}x" if r.ratio_vs_reference is not None else "   -  "
    mem = f"{r.peak_mem_mb:9.1f}" if r.peak_mem_mb is not None else "      n/a"
    return (f"{r.model:15s} {r.n_radii:3d} {r.task:10s} {r.backend:10s} {r.median_s * 1e3:11.1f} "
            f"{r.throughput:12.1f} {r.unit:10s} {ratio} {mem}")


HEADER = (f"{'model':15s} {'N':>3s} {'task':10s} {'backend':10s} {'median ms':>11s} {'throughput':>12s} "
          f"{'unit':10s} {'ratio':>6s} {'peak MB':>9s}")


def markdown(results: list[Result]) -> str:
    lines = ["| model | N | task | backend | batch | median ms | throughput | vs reference | peak MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        ratio = f"{r.ratio_vs_reference:.2f}x" if r.ratio_vs_reference is not None else "-"
        mem = f"{r.peak_mem_mb:.0f}" if r.peak_mem_mb is not None else "n/a"
        lines.append(f"| {r.model} | {r.n_radii} | {r.task} | {r.backend} | {r.batch} | {r.median_s * 1e3:.1f} | "
                     f"{r.throughput:.1f} {r.unit} | {ratio} | {mem} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--n-radii", nargs="+", type=int, default=[1, 4, 10])
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--backends", nargs="+", default=None, choices=["reference", "cpu", "cuda"],
                   help="default: every backend available for the device")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=None, help="default: 32 on GPU, 8 on CPU")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per backend (median reported)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU")
    p.add_argument("--quick", action="store_true", help="smoke run: dm-small, N = 1 and 4, batch 2, 1 repeat")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--markdown", action="store_true", help="also print a markdown table")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.models, args.n_radii, args.repeats = ["dm-small"], [1, 4], 1
        args.batch = args.batch or 2
    batch = args.batch or (32 if device.type == "cuda" else 8)
    if device.type == "cuda":
        # exact float32 products: TF32 would change the bounds (and can break soundness)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False

    backends = available_backends(device, args.backends)
    print(f"gmbound bound benchmark  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"device: {device_description(device)}")
    print(f"torch {torch.__version__}, python {platform.python_version()}, gmbound commit {git_commit()}")
    ext = "loaded" if _extension.available() else f"missing ({_extension.unavailable_reason()})"
    print(f"extension gmbound._C: {ext}; backends: {', '.join(backends)}")
    print(f"batch {batch}, repeats {args.repeats} (median), float32, eps: MNIST 0.3, CIFAR 8/255, clipped to [0, 1]")
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
                for r in run_case(name, n, task, batch, device, backends, args.repeats):
                    results.append(r)
                    print(format_row(r), flush=True)
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

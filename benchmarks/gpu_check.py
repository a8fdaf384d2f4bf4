"""One command for a lent GPU: build, CUDA tests, compute-sanitizer, the benchmark grid, RESULTS rows.

On a bare H100 / H200 with torch installed (the device machines carry torch 2.11, nvcc, ninja and
pybind11; nothing is downloaded), from the repository root:

    bash benchmarks/gpu_check.sh --out "$OUT"          # or: python3 benchmarks/gpu_check.py --out DIR

Steps, each reported PASS / FAIL / SKIP with its time; the exit status is 1 when any step failed:

1. ``build``: ``setup.py build_ext --inplace`` with the CUDA kernels (``GMBOUND_CUDA=1``);
2. ``tests``: the CUDA tests (``pytest -m cuda``): all must pass and none may skip;
3. ``sanitizer``: ``compute-sanitizer`` memcheck and racecheck on a small end-to-end case (IBP,
   CROWN-IBP and full CROWN bounds and a GM-CROWN-IBP training step with its backward);
4. ``grid``: DM-small, DM-large MNIST and CIFAR DM-large; N = 1, 4, 10; batch 32 and 256; IBP,
   CROWN-IBP and the GM training step; reference vs compiled; TF32 off and on. Cases run from
   small to large until ``--grid-budget-s`` is spent; the rest are listed as not run;
5. ``results.md`` / ``results.json`` under ``--out``: the rows for benchmarks/RESULTS.md with the
   device, torch, CUDA and commit.

``--dry-run`` runs the same steps on the CPU at tiny sizes (the build is checked, not redone; the
tests are a small CPU subset; the sanitizer's case runs without the sanitizer), so the script itself
is tested without a GPU (tests/test_gpu_check.py).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

GRID_MODELS = ("dm-small", "dm-large", "cifar-dm-large")
GRID_N = (1, 4, 10)
GRID_BATCH = (32, 256)
GRID_TASKS = ("ibp", "crown-ibp", "gm-train")
CUDA_TEST_FILES = ("tests/test_kernels.py", "tests/test_kernels_maxpool.py", "tests/test_kernels_end_to_end.py",
                   "tests/test_ops_kernels.py", "tests/test_determinism.py")
DRY_TEST_ARGS = ("tests/test_kernels.py", "-k", "test_concretize and case0 and cpu")


@dataclass
class Step:
    name: str
    status: str = "SKIP"  # PASS, FAIL or SKIP
    seconds: float = 0.0
    detail: str = ""


@dataclass
class Report:
    dry_run: bool
    steps: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    rows: list = field(default_factory=list)
    not_run: list = field(default_factory=list)

    def ok(self) -> bool:
        return all(s.status != "FAIL" for s in self.steps)


def _env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


def _run_step(report: Report, name: str, fn: Callable[[], tuple[str, str]]) -> Step:
    step = Step(name)
    t = time.perf_counter()
    print(f"== {name}", flush=True)
    try:
        step.status, step.detail = fn()
    except Exception as err:  # a step that breaks is a failed step; the others still run
        step.status, step.detail = "FAIL", f"{type(err).__name__}: {err}"
    step.seconds = time.perf_counter() - t
    print(f"== {name}: {step.status} ({step.seconds:.1f} s) {step.detail}", flush=True)
    report.steps.append(step)
    return step


# ----------------------------------------------------------------------------- environment
def environment(dry_run: bool) -> dict:
    import torch

    sys.path.insert(0, HERE)
    from bench_bounds import git_commit  # noqa: E402  (benchmarks/ is not a package)

    nvcc = shutil.which("nvcc") or os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")
    nvcc_version = "none"
    if os.path.exists(nvcc):
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()
        nvcc_version = out[-1] if out else "unknown"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                device="cpu (dry run)" if dry_run else gpu, gpu=gpu, torch=torch.__version__,
                torch_cuda=torch.version.cuda, nvcc=nvcc_version, python=platform.python_version(),
                commit=git_commit(), host_cpus=os.cpu_count())


# ----------------------------------------------------------------------------- 1. build
def build(dry_run: bool, jobs: int) -> tuple[str, str]:
    if dry_run:
        # the dry run checks the extension that is there instead of spending minutes on a rebuild
        from gmbound import _extension

        if _extension.available():
            return "PASS", "dry run: extension present, not rebuilt"
        return "FAIL", str(_extension.unavailable_reason())
    env = _env(GMBOUND_CUDA="1", MAX_JOBS=str(jobs))
    proc = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
    if proc.returncode != 0:
        return "FAIL", tail
    return "PASS", f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', '(the visible GPU)')}"


# ----------------------------------------------------------------------------- 2. tests
def tests(dry_run: bool, out_dir: str) -> tuple[str, str]:
    xml = os.path.join(out_dir, "tests.xml")
    select = list(DRY_TEST_ARGS) if dry_run else list(CUDA_TEST_FILES) + ["-m", "cuda"]
    env = _env(GMBOUND_REQUIRE_EXTENSION="1", CUBLAS_WORKSPACE_CONFIG=":4096:8",
               **({} if dry_run else {"GMBOUND_CUDA": "1"}))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           f"--junitxml={xml}", *select], cwd=ROOT, env=env, capture_output=True, text=True)
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    if os.path.exists(xml):
        suites = ET.parse(xml).getroot()
        for suite in suites.iter("testsuite"):
            for key in counts:
                counts[key] += int(suite.get(key, 0))
    summary = ", ".join(f"{v} {k}" for k, v in counts.items())
    if proc.returncode != 0 or counts["failures"] or counts["errors"] or counts["skipped"] or not counts["tests"]:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        return "FAIL", f"{summary} (all must pass, none may skip)\n{tail}"
    return "PASS", summary


# ----------------------------------------------------------------------------- 3. sanitizer
def e2e_case(device_name: str) -> None:
    """The small end-to-end case the sanitizer watches: every method, forward and backward."""
    import torch
    from torch import nn

    import gmbound

    device = torch.device(device_name)
    backend = device.type
    torch.manual_seed(0)
    relu_cnn = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1),
                             nn.ReLU(), nn.Flatten(), nn.Linear(8 * 5 * 5, 16), nn.ReLU(), nn.Linear(16, 10))
    # leaky ReLU (the ReLU kernels with a slope) and max pooling (its own kernel), overlapping windows too
    leaky_pool_cnn = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.LeakyReLU(0.1), nn.MaxPool2d(2),
                                   nn.Conv2d(4, 8, 3, padding=1), nn.LeakyReLU(0.1), nn.MaxPool2d(3, 1, 1),
                                   nn.Flatten(), nn.Linear(8 * 5 * 5, 10))
    x = torch.rand(3, 1, 10, 10, device=device)
    y = torch.tensor([1, 2, 3], device=device)
    for model in (relu_cnn.to(device), leaky_pool_cnn.to(device)):
        net = gmbound.BoundedSequential(model)
        for method in ("ibp", "crown-ibp", "crown"):
            b = net.bounds(x, [0.05, 0.1], method=method, x_min=0.0, x_max=1.0, backend=backend)
            assert torch.isfinite(b.lower).all() and (b.lower <= b.upper).all(), method
        for stochastic in (False, True):
            out = gmbound.gm_loss(net, x, y, 0.1, n_radii=3, kappa=0.5, x_min=0.0, x_max=1.0, backend=backend,
                                  stochastic=stochastic)
            out.loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    print("e2e case ok")


def sanitizer(dry_run: bool) -> tuple[str, str]:
    me = os.path.abspath(__file__)
    if dry_run:
        e2e_case("cpu")  # in this process: the sanitizer watches CUDA only
        return "PASS", "dry run: the case on the CPU, no sanitizer"
    tool = shutil.which("compute-sanitizer") or "/usr/local/cuda/bin/compute-sanitizer"
    if not os.path.exists(tool):
        return "FAIL", "compute-sanitizer not found"
    details = []
    status = "PASS"
    for check in ("memcheck", "racecheck"):
        proc = subprocess.run([tool, "--tool", check, "--error-exitcode", "3", sys.executable, me, "--e2e-case",
                               "cuda"], cwd=ROOT, env=_env(), capture_output=True, text=True)
        last = [ln for ln in (proc.stdout + proc.stderr).strip().splitlines() if "ERROR SUMMARY" in ln]
        details.append(f"{check}: rc {proc.returncode} {last[-1] if last else ''}".strip())
        if proc.returncode != 0:
            status = "FAIL"
            details.append("\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:]))
    return status, "; ".join(details)


# ----------------------------------------------------------------------------- 4. grid
def grid(dry_run: bool, budget_s: float, repeats: int, report: Report) -> tuple[str, str]:
    import torch

    sys.path.insert(0, HERE)
    import bench_bounds  # noqa: E402

    device = torch.device("cpu" if dry_run else "cuda")
    if dry_run:
        models, ns, batches, repeats = ("dm-small",), (1,), (2,), 1
    else:
        models, ns, batches = GRID_MODELS, GRID_N, GRID_BATCH
    backends = bench_bounds.available_backends(device, None)
    if not dry_run and "cuda" not in backends:
        return "FAIL", f"no compiled CUDA kernels: backends {backends}"
    cases = [(m, n, b, t, tf32) for m in models for b in batches for n in ns for t in GRID_TASKS
             for tf32 in (False, True)]
    start = time.perf_counter()
    failures = []
    for case in cases:
        if time.perf_counter() - start > budget_s:
            report.not_run.append(case)
            continue
        name, n, batch, task, tf32 = case
        try:
            results = bench_bounds.run_case(name, n, task, batch, device, backends, repeats, allow_tf32=tf32)
        except torch.cuda.OutOfMemoryError as err:
            failures.append(f"{case}: out of memory ({str(err).splitlines()[0]})")
            torch.cuda.empty_cache()
            continue
        for r in results:
            row = asdict(r)
            row["tf32"] = tf32
            report.rows.append(row)
            print(f"  {name:15s} N={n:<2d} B={batch:<3d} {task:9s} tf32={'on ' if tf32 else 'off'} "
                  f"{r.backend:9s} {r.median_s * 1e3:9.1f} ms  {r.throughput:10.1f} {r.unit}", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    detail = f"{len(cases) - len(report.not_run)} of {len(cases)} cases run"
    if report.not_run:
        detail += f" ({len(report.not_run)} not run: time budget {budget_s:.0f} s spent)"
    if failures:
        return "FAIL", detail + "; " + "; ".join(failures)
    return "PASS", detail


# ----------------------------------------------------------------------------- 5. results
def markdown(report: Report) -> str:
    m = report.meta
    lines = [f"### gpu_check {'(dry run, CPU) ' if report.dry_run else ''}{m.get('date', '')}", "",
             f"device {m.get('device')}; torch {m.get('torch')} (CUDA {m.get('torch_cuda')}); nvcc {m.get('nvcc')}; "
             f"python {m.get('python')}; commit {m.get('commit')}", "",
             "| step | status | seconds | detail |", "|---|---|---|---|"]
    for s in report.steps:
        detail = s.detail.splitlines()[0] if s.detail else ""
        lines.append(f"| {s.name} | {s.status} | {s.seconds:.1f} | {detail} |")
    lines += ["", "| model | N | batch | task | TF32 | backend | median ms | throughput | vs reference | peak MB |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report.rows:
        ratio = f"{r['ratio_vs_reference']:.2f}x" if r.get("ratio_vs_reference") is not None else "-"
        mem = f"{r['peak_mem_mb']:.0f}" if r.get("peak_mem_mb") is not None else "n/a"
        lines.append(f"| {r['model']} | {r['n_radii']} | {r['batch']} | {r['task']} | {'on' if r['tf32'] else 'off'} "
                     f"| {r['backend']} | {r['median_s'] * 1e3:.1f} | {r['throughput']:.1f} {r['unit']} | {ratio} "
                     f"| {mem} |")
    if report.not_run:
        lines += ["", "Not run (time budget): " + ", ".join(
            f"{m_} N={n} B={b} {t} tf32={'on' if f else 'off'}" for m_, n, b, t, f in report.not_run)]
    return "\n".join(lines) + "\n"


def write_results(report: Report, out_dir: str) -> None:
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(markdown(report))
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(dict(meta=report.meta, dry_run=report.dry_run, steps=[asdict(s) for s in report.steps],
                       rows=report.rows, not_run=report.not_run), f, indent=1)


# ----------------------------------------------------------------------------- main
def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at tiny sizes")
    p.add_argument("--out", default=os.path.join(HERE, "gpu_check_out"), help="where results.md / .json go")
    p.add_argument("--skip", nargs="*", default=[], choices=["build", "tests", "sanitizer", "grid"],
                   help="steps to leave out (reported as SKIP)")
    p.add_argument("--grid-budget-s", type=float, default=240.0, help="stop starting grid cases after this")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per grid case (median)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="MAX_JOBS for the build")
    p.add_argument("--e2e-case", metavar="DEVICE", help=argparse.SUPPRESS)  # the sanitizer's child process
    args = p.parse_args(argv)
    if args.e2e_case:
        e2e_case(args.e2e_case)
        return 0
    os.makedirs(args.out, exist_ok=True)
    report = Report(dry_run=args.dry_run)
    report.meta = environment(args.dry_run)
    print("gpu_check " + ", ".join(f"{k} {v}" for k, v in report.meta.items()), flush=True)
    if not args.dry_run and report.meta["gpu"] == "none":
        print("gpu_check: no CUDA GPU visible (use --dry-run on a CPU machine)", file=sys.stderr)
        return 2
    steps = [("build", lambda: build(args.dry_run, args.jobs)),
             ("tests", lambda: tests(args.dry_run, args.out)),
             ("sanitizer", lambda: sanitizer(args.dry_run)),
             ("grid", lambda: grid(args.dry_run, args.grid_budget_s, args.repeats, report))]
    for name, fn in steps:
        if name in args.skip:
            report.steps.append(Step(name, "SKIP", 0.0, "--skip"))
            continue
        step = _run_step(report, name, fn)
        if name == "build" and step.status == "FAIL":
            break  # nothing below can run on a failed build
    write_results(report, args.out)
    print(markdown(report))
    print(f"gpu_check: {'PASS' if report.ok() else 'FAIL'}; results in {args.out}")
    return 0 if report.ok() else 1


if __name__ == "__main__":
    sys.exit(main())

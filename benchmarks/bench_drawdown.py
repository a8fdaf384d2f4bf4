"""Drawdown evaluation, bisection against the exhaustive grid (issue 22, part 2).

Evaluates one model (a checkpoint or weights-only ``model.pt``) on the first ``--test-subset``
test images with ``gmbound.evaluate.evaluate`` both ways: ``exhaustive=True`` (every radius
bounded, every unbroken sample attacked at every PGD radius) and the default bisection mode.
The images are cut into slices of ``--slice`` and the two modes alternate on each slice (their
order swapped from one slice to the next), in one process, so that a loaded machine slows both
alike. Per slice and in total it reports wall time and process CPU time per mode (at one thread
the CPU time is what the work cost, also when other jobs share the cores), wall time per part, and
compares the numbers:

* IBP: verified counts must be identical at every radius (printed as a check, exit status 1 if not);
* CROWN-IBP: radii where bisection certifies fewer samples than the exhaustive grid (allowed
  only through isolated certificates above a gap, see ``gmbound.drawdown``) are listed;
* PGD error of both, and the soundness flags of both.

    python benchmarks/bench_drawdown.py --test-subset 2000 --threads 1 \\
        --out benchmarks/measurements/issue22-drawdown
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_bounds import device_description, git_commit  # noqa: E402

from gmbound.checkpoint import load_model  # noqa: E402
from gmbound.config import parse_eps_grid  # noqa: E402
from gmbound.data import load_dataset  # noqa: E402
from gmbound.evaluate import evaluate  # noqa: E402

MODES = ("exhaustive", "bisection")


def counts(res, key: str) -> list[int]:
    """Per-radius sample counts behind a list of fractions of ``res`` (n_samples each)."""
    n = res.n_samples
    if key == "pgd":
        return [round(p * n) for p in res.pgd_error]
    if key == "any":
        return [round(p * n) for p in res.verified_error_any]
    return [round(p * n) for p in res.verified_error[key]]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="results/mnist_table3/eps0.5_gm-crown-ibp_s0/model.pt")
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--eps-grid", default="0:0.5:0.01")
    p.add_argument("--pgd-eps-grid", default=None, help="default: the whole eps grid")
    p.add_argument("--verifiers", default="ibp,crown-ibp")
    p.add_argument("--pgd-steps", type=int, default=50)
    p.add_argument("--pgd-restarts", type=int, default=3)
    p.add_argument("--pgd-loss", default="margin")
    p.add_argument("--test-subset", type=int, default=2000)
    p.add_argument("--slice", type=int, default=200, help="images per interleaved slice")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="folder for result.json / result.txt (rewritten after every slice)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    model, ckpt = load_model(a.model)
    mi = ckpt["model_info"]
    grid = parse_eps_grid(a.eps_grid, "--eps-grid")
    pgd_grid = parse_eps_grid(a.pgd_eps_grid, "--pgd-eps-grid") if a.pgd_eps_grid else None
    verifiers = a.verifiers.split(",")
    dataset = load_dataset(ckpt["config"]["data"]["name"], a.data_dir, train=False, download=False)
    n = min(a.test_subset, len(dataset))
    keys = verifiers + ["any", "pgd"]
    total = {m: {k: [0] * len(grid) for k in keys} for m in MODES}
    seconds = {m: {} for m in MODES}
    wall = {m: 0.0 for m in MODES}
    cpu = {m: 0.0 for m in MODES}   # process CPU time: at one thread, what the work cost even on a busy machine
    unsound = {m: 0 for m in MODES}
    work = {m: {} for m in MODES}
    slices, loads = [], []
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": device_description(torch.device("cpu")), "torch": torch.__version__, "commit": git_commit(),
            "model": a.model, "eps_grid": a.eps_grid, "pgd_eps_grid": a.pgd_eps_grid or a.eps_grid,
            "verifiers": verifiers, "pgd": f"{a.pgd_loss} loss, {a.pgd_steps} steps x {a.pgd_restarts} restarts",
            "threads": a.threads, "slice": a.slice, "batch_size": a.batch_size}
    warm = DataLoader(Subset(dataset, range(2)), batch_size=2)
    for m in MODES:  # untimed: first calls pay for lazy set-up (kernels, allocator), not the mode
        evaluate(model, warm, grid, verifiers=verifiers, pgd_steps=1, x_min=mi["x_min"], x_max=mi["x_max"],
                 device=torch.device("cpu"), exhaustive=(m == "exhaustive"), strict=False)
    for k, s in enumerate(range(0, n, a.slice)):
        loader = DataLoader(Subset(dataset, range(s, min(n, s + a.slice))), batch_size=a.batch_size, shuffle=False)
        order = MODES if k % 2 == 0 else MODES[::-1]
        row = {"first": s, "n": len(loader.dataset)}
        loads.append(os.getloadavg()[0])
        for m in order:
            t0, c0 = time.perf_counter(), time.process_time()
            res = evaluate(model, loader, grid, verifiers=verifiers, pgd_steps=a.pgd_steps,
                           pgd_restarts=a.pgd_restarts, pgd_loss=a.pgd_loss, pgd_eps_grid=pgd_grid,
                           x_min=mi["x_min"], x_max=mi["x_max"], device=torch.device("cpu"),
                           exhaustive=(m == "exhaustive"), seed=k, strict=False)
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            wall[m] += dt
            cpu[m] += dc
            row[f"{m}_s"] = round(dt, 2)
            row[f"{m}_cpu_s"] = round(dc, 2)
            for part, sec in res.seconds.items():
                seconds[m][part] = seconds[m].get(part, 0.0) + sec
            for key in keys:
                c = counts(res, key)
                total[m][key] = [t + ci for t, ci in zip(total[m][key], c)]
            unsound[m] += sum(sum(u) for u in res.unsound.values())
            for v, e in res.radius_search["bound_evaluations"].items():
                work[m][f"bound_evaluations_{v}"] = work[m].get(f"bound_evaluations_{v}", 0) + e
            work[m]["pgd_attacks"] = work[m].get("pgd_attacks", 0) + res.pgd["attacks"]
            if m == "bisection":
                au = res.radius_search["pgd_audit"]
                work[m]["audit_attacks"] = work[m].get("audit_attacks", 0) + au["attacks"]
                work[m]["audit_broken"] = work[m].get("audit_broken", 0) + au["broken"]
        loads.append(os.getloadavg()[0])
        slices.append(row)
        report = summarize(meta, grid, verifiers, total, wall, cpu, seconds, unsound, work, slices, loads,
                           sum(r["n"] for r in slices))
        print(f"slice {k}: images {s}..{s + row['n'] - 1}: exhaustive {row['exhaustive_s']:.1f}s, "
              f"bisection {row['bisection_s']:.1f}s (CPU {row['exhaustive_cpu_s']:.1f}s / {row['bisection_cpu_s']:.1f}s), "
              f"load {loads[-1]:.2f}", flush=True)
        if a.out:
            out = Path(a.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / "result.json").write_text(json.dumps(report, indent=1))
            (out / "result.txt").write_text(format_report(report))
    print(format_report(report))
    return 0 if report["checks"]["ibp_identical"] in (True, None) else 1


def summarize(meta, grid, verifiers, total, wall, cpu, seconds, unsound, work, slices, loads, n) -> dict:
    """Totals so far, the checks, and the speed-up."""
    ex, bi = total["exhaustive"], total["bisection"]
    checks = {"ibp_identical": (ex["ibp"] == bi["ibp"]) if "ibp" in verifiers else None}
    for v in verifiers:
        if v != "ibp":  # unverified counts: bisection certifies fewer where its count is higher
            checks[f"{v}_radii_certifying_fewer"] = [(grid[i], bi[v][i] - ex[v][i]) for i in range(len(grid))
                                                     if bi[v][i] > ex[v][i]]
            checks[f"{v}_radii_certifying_more"] = sum(1 for i in range(len(grid)) if bi[v][i] < ex[v][i])
            checks[f"{v}_extra_certified_sample_radii"] = sum(ex[v][i] - bi[v][i] for i in range(len(grid)))
    checks["unsound"] = unsound
    return {"meta": meta, "n_images": n, "eps": grid,
            "unverified": total, "wall_s": {m: round(w, 2) for m, w in wall.items()},
            "speedup": round(wall["exhaustive"] / max(wall["bisection"], 1e-9), 2),
            "cpu_s": {m: round(c, 2) for m, c in cpu.items()},
            "speedup_cpu": round(cpu["exhaustive"] / max(cpu["bisection"], 1e-9), 2),
            "seconds_by_part": {m: {k: round(s, 2) for k, s in d.items()} for m, d in seconds.items()},
            "work": work, "load_average_1min": {"min": min(loads), "max": max(loads),
                                                "mean": round(sum(loads) / len(loads), 2)},
            "checks": checks, "slices": slices}


def format_report(r: dict) -> str:
    m = r["meta"]
    lines = [f"bench_drawdown: {m['model']}, first {r['n_images']} test images, grid {m['eps_grid']} "
             f"(PGD {m['pgd_eps_grid']}, {m['pgd']})",
             f"device: {m['device']}; torch {m['torch']}; commit {m['commit']}; {m['date']}",
             f"load average (1 min) during the run: mean {r['load_average_1min']['mean']}, "
             f"min {r['load_average_1min']['min']:.2f}, max {r['load_average_1min']['max']:.2f}",
             f"wall: exhaustive {r['wall_s']['exhaustive']:.1f}s, bisection {r['wall_s']['bisection']:.1f}s, "
             f"speed-up {r['speedup']}x; process CPU time: exhaustive {r['cpu_s']['exhaustive']:.1f}s, "
             f"bisection {r['cpu_s']['bisection']:.1f}s, speed-up {r['speedup_cpu']}x",
             f"by part: exhaustive {r['seconds_by_part']['exhaustive']}; bisection {r['seconds_by_part']['bisection']}",
             f"work: {r['work']}",
             f"checks: {r['checks']}",
             "", "errors (%)  eps: " + "  ".join(f"{k}(ex/bi)" for k in r["unverified"]["exhaustive"])]
    n = max(r["n_images"], 1)
    for i, e in enumerate(r["eps"]):
        cells = [f"{100 * r['unverified']['exhaustive'][k][i] / n:.2f}/{100 * r['unverified']['bisection'][k][i] / n:.2f}"
                 for k in r["unverified"]["exhaustive"]]
        lines.append(f"  {e:.2f}  " + "  ".join(cells))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

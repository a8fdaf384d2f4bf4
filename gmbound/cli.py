"""The ``gmbound`` command: ``train``, ``eval``, ``certify``, ``plot`` and ``demo``.

    gmbound train --config configs/demo.yaml train.epochs=2 data.dir=/data
    gmbound train --resume runs/demo                  # continue a killed run
    gmbound eval --checkpoint runs/a/checkpoint.pt runs/b/checkpoint.pt --eps-grid 0:0.5:0.01
    gmbound certify --checkpoint runs/a/checkpoint.pt --eps-max 0.5
    gmbound plot runs/a/eval/eval_a.json runs/b/eval/eval_b.json -o fig.png
    gmbound demo

Bad input (a flag out of range, a missing, corrupt or foreign data, checkpoint or result file, an
output path under an existing file, a locked run folder) exits with status 2 and one line on
stderr saying what is wrong, never a traceback. A run that fails on its own (training diverged,
an unsound bound found) exits with status 1, also with one line.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from .config import (DEFAULTS, DEMO_CONFIG, ConfigError, check_pgd_settings, make_config, parse_eps_grid,
                     parse_verifiers)
from .outputs import check_output_file, check_output_folder


# ----------------------------------------------------------------------------- flag types
def _int_at_least(low: int):
    what = "a positive integer" if low == 1 else f"an integer >= {low}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
        return value
    parse.__name__ = what  # argparse names the type in some messages
    return parse


positive_int = _int_at_least(1)
non_negative_int = _int_at_least(0)


def _float_check(positive: bool):
    what = "a finite number > 0" if positive else "a finite number >= 0"

    def parse(text: str) -> float:
        from .config import parse_number

        try:
            value = parse_number(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value
    parse.__name__ = what
    return parse


positive_float = _float_check(True)
non_negative_float = _float_check(False)


def device_spec(text: str) -> str:
    """auto, cpu, cuda or cuda:<index> (availability is checked when the device is used)."""
    t = text.strip().lower()
    if t in ("auto", "cpu", "cuda") or (t.startswith("cuda:") and t[5:].isdigit()):
        return t
    raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda or cuda:<index>, got {text!r}")


# ----------------------------------------------------------------------------- train
def _leave_process_group() -> None:
    """Destroy the process group a finished torchrun training joined, before the interpreter exits:
    gloo's worker threads left running then abort the process ("terminate called without an active
    exception", SIGABRT), failing a run that finished."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _cmd_train(args: argparse.Namespace) -> int:
    from .checkpoint import CHECKPOINT_NAME, load_checkpoint
    from .train import train

    if args.config is None and args.resume is None:
        raise ConfigError("give --config FILE (and optional key=value overrides), or --resume RUN_DIR")
    resume = args.resume is not None
    if args.loss_fusion:
        args.overrides = list(args.overrides) + ["train.loss_fusion=true"]
    if args.config is None:  # resume from a run folder / checkpoint: its saved config, then the overrides
        path = Path(args.resume)
        ckpt = load_checkpoint(path)
        base = ckpt["config"]
        cfg = make_config(base=base, overrides=args.overrides)
        if path.is_file():
            cfg["out_dir"] = str(path.parent)
        elif path.name != CHECKPOINT_NAME:
            cfg["out_dir"] = str(path)
    else:
        cfg = make_config(args.config, args.overrides)
        if args.resume:  # --config F --resume RUN_DIR
            cfg["out_dir"] = str(Path(args.resume).parent if Path(args.resume).is_file() else args.resume)
    result = train(cfg, resume=resume, overwrite=args.overwrite, stop_after_epoch=args.stop_after_epoch)
    _leave_process_group()
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return 0
    state = "stopped after" if result.stopped_early else "finished"
    print(f"{state} epoch {result.epochs_done}/{cfg['train']['epochs']} in {result.seconds:.1f}s; "
          f"checkpoint: {result.checkpoint}; log: {result.out_dir / 'log.csv'}")
    return 0


# ----------------------------------------------------------------------------- eval
def _eval_config(ckpt_cfg: dict, args: argparse.Namespace) -> dict:
    e = copy.deepcopy(DEFAULTS["eval"])
    e.update(ckpt_cfg.get("eval", {}))
    flags = {"eps_grid": args.eps_grid, "verifiers": args.verifiers, "pgd_steps": args.pgd_steps,
             "pgd_restarts": args.pgd_restarts, "pgd_step_size": args.pgd_step_size,
             "pgd_loss": args.pgd_loss, "pgd_eps_grid": args.pgd_eps_grid,
             "batch_size": args.batch_size, "test_subset": args.test_subset, "dtype": args.dtype,
             "crown_max_neurons": args.crown_max_neurons, "radii_chunk": args.radii_chunk,
             "exhaustive": True if args.exhaustive else None, "pgd_audit": False if args.no_pgd_audit else None}
    for key, value in flags.items():
        if value is not None:
            e[key] = value
    parse_eps_grid(e["eps_grid"], "--eps-grid")
    check_pgd_settings(e)
    e["verifiers"] = parse_verifiers(e["verifiers"], "--verifiers")
    return e


def _stem(path: str, used: set) -> str:
    p = Path(path)
    stem = p.parent.name if p.name == "checkpoint.pt" else p.stem
    stem = stem or "model"
    base, k = stem, 2
    while stem in used:
        stem, k = f"{base}_{k}", k + 1
    used.add(stem)
    return stem


def _cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from .checkpoint import load_checkpoint
    from .evaluate import UnsoundBoundError, evaluate_checkpoint, format_table, unsound_message, write_result
    from .plots import plot_drawdown
    from .train import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    labels = args.label or []
    if labels and len(labels) != len(args.checkpoint):
        raise ConfigError(f"--label: give one label per checkpoint ({len(args.checkpoint)}), got {len(labels)}")
    out = Path(args.out) if args.out else Path(args.checkpoint[0]).resolve().parent / "eval"
    png = Path(args.plot) if args.plot else out / "drawdown.png"
    check_output_folder(out, "--out")  # before the evaluation, not after it
    check_output_file(png, "--plot")
    ckpts = [load_checkpoint(path) for path in args.checkpoint]  # every file checked before any work
    ecfgs = [_eval_config(ckpt["config"], args) for ckpt in ckpts]
    results, used, unsound = [], set(), []
    for i, path in enumerate(args.checkpoint):
        ecfg = ecfgs[i]
        res = evaluate_checkpoint(path, ecfg, data_dir=args.data_dir, device=device,
                                  label=labels[i] if labels else None, strict=False, progress=not args.quiet)
        stem = f"eval_{_stem(path, used)}"
        csv_path, json_path = write_result(res, out, stem)
        print(f"\n{res.meta['label']}  [{res.meta['method']}, eps_train {res.meta['train_eps']:g}, "
              f"{res.n_samples} test samples, standard error {100 * res.standard_error:.2f}%]")
        for v, why in res.skipped_verifiers.items():
            print(f"  verifier {v} skipped: {why}")
        print(format_table(res))
        print(f"  radius search: {res.radius_search.get('mode')}")
        print(f"  written: {csv_path}, {json_path}  (seconds: {res.seconds})")
        if not res.sound:
            print("\n!!! " + unsound_message(res) + "\n", file=sys.stderr)
            unsound.append(path)
        results.append(res.to_dict())
    plot_drawdown(results, png, title=args.title)
    print(f"plot: {png}")
    if unsound and not args.no_strict:
        raise UnsoundBoundError(f"unsound bounds found for {', '.join(map(str, unsound))} (results written)")
    return 0


# ----------------------------------------------------------------------------- certify
def _cmd_certify(args: argparse.Namespace) -> int:
    import torch

    from .certify import certify, write_certify
    from .checkpoint import build_model_from_checkpoint, load_checkpoint
    from .evaluate import checkpoint_label, eval_loader_for
    from .train import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    out = Path(args.out) if args.out else Path(args.checkpoint).resolve().parent / "certify"
    check_output_folder(out, "--out")
    ckpt = load_checkpoint(args.checkpoint)
    cfg = ckpt["config"]
    if args.data_dir:
        cfg["data"]["dir"] = args.data_dir
    subset = args.test_subset if args.test_subset is not None else cfg["data"]["test_subset"]
    loader = eval_loader_for(cfg, subset, args.batch_size)
    model = build_model_from_checkpoint(ckpt)
    mi = ckpt["model_info"]
    verifiers = parse_verifiers(args.verifiers, "--verifiers")
    eps_max = args.eps_max if args.eps_max is not None else 2 * cfg["train"]["eps"] or 0.5
    t0 = time.time()
    res = certify(model, loader, verifiers=verifiers, eps_max=eps_max, rounds=args.rounds, k=args.k,
                  x_min=mi["x_min"], x_max=mi["x_max"], device=device,
                  dtype=torch.float64 if args.dtype == "float64" else torch.float32,
                  backend=cfg["train"]["backend"])
    label = args.label or checkpoint_label(ckpt, args.checkpoint)
    res.meta.update({"checkpoint": str(args.checkpoint), "label": label, "seconds_total": round(time.time() - t0, 2)})
    paths = write_certify(res, out, "certify", label)
    summary = json.loads(paths["json"].read_text())
    print(f"{label}: {summary['n_samples']} samples, clean accuracy {100 * summary['clean_accuracy']:.2f}%, "
          f"radius resolution {summary['resolution']:.2g}, {summary['seconds']}")
    grid = summary["radius"]
    for n, accs in summary["certified_accuracy"].items():
        marks = [(r, a) for r, a in zip(grid, accs)][:: max(1, len(grid) // 10)]
        print(f"  {n:>10}: median radius {summary['median_radius'][n]:.4g}; certified accuracy " +
              ", ".join(f"{100 * a:.1f}%@{r:g}" for r, a in marks))
    print("written: " + ", ".join(str(p) for p in paths.values()))
    return 0


# ----------------------------------------------------------------------------- plot
def _cmd_plot(args: argparse.Namespace) -> int:
    from .evaluate import load_result
    from .plots import plot_drawdown

    check_output_file(args.output, "-o/--output")
    results = [_load_result_file(p, load_result) for p in args.results]
    if args.label:
        if len(args.label) != len(results):
            raise ConfigError(f"--label: give one label per result ({len(results)})")
        for r, lab in zip(results, args.label):
            r.setdefault("meta", {})["label"] = lab
    path = plot_drawdown(results, args.output, title=args.title, per_verifier=args.per_verifier)
    print(f"plot: {path}")
    return 0


def _load_result_file(path: str, load_result) -> dict:
    """An eval JSON, with one-line errors for unreadable, corrupt or foreign files."""
    try:
        data = load_result(path)
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text (JSON) file") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: corrupt JSON ({err})") from None
    except (ValueError, TypeError) as err:  # a JSON list or number: load_result's key check fails
        text = str(err)
        raise ConfigError(text if text.startswith(str(path)) else f"{path}: not a gmbound eval JSON ({text})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a gmbound eval JSON (top level is not an object)")
    eps = data["eps"]
    for key in ("eps", "verified_error_any", "pgd_error"):
        value = data[key]
        # null: a radius PGD did not attack (eval.pgd_eps_grid), or a NaN written by json
        if not isinstance(value, list) or len(value) != len(eps) or not all(
                v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in value):
            raise ConfigError(f"{path}: not a gmbound eval JSON ({key!r} is not a list of "
                              f"{len(eps) if isinstance(eps, list) else 'n'} numbers)")
    return data


# ----------------------------------------------------------------------------- demo
DEMO_EPS = (0.0, 0.025, 0.05, 0.075, 0.1, 0.15)
DEMO_BUDGET_S = 180.0


def run_demo(out: str | Path = "runs/demo", compare: str | bool = "auto", budget_s: float = DEMO_BUDGET_S,
             quiet: bool = False) -> dict:
    """Train GM-CROWN-IBP on the bundled MNIST subset, evaluate it, and print verified (IBP,
    CROWN-IBP) and PGD error at a few radii. ``compare``: also train CROWN-IBP on the same budget
    (True), never (False), or when the first run's time says it fits in ``budget_s`` ("auto")."""
    from .evaluate import evaluate_checkpoint, format_table, write_result
    from .plots import plot_drawdown
    from .train import train

    t_start = time.time()
    out = Path(out)
    tables, results = {}, []

    def one(method: str) -> None:
        cfg = make_config(base=DEMO_CONFIG, overrides=[f"train.method={method}", f"name=demo-{method}",
                                                       f"out_dir={out / method}"])
        if not quiet:
            t = cfg["train"]
            grt = ", stochastic GRT" if t["stochastic"] and method.startswith("gm-") else ""
            print(f"== training {method} on {cfg['data']['name']} ({cfg['model']['name']}, {t['epochs']} epochs, "
                  f"eps_train {t['eps']}{grt}) ==", flush=True)
        t0 = time.time()
        run = train(cfg, overwrite=True, quiet=quiet)
        t_train = time.time() - t0
        res = evaluate_checkpoint(run.checkpoint, cfg["eval"], label=method, progress=False)
        write_result(res, out, f"eval_{method}")
        results.append(res.to_dict())
        tables[method] = (res, t_train, time.time() - t0)

    one("gm-crown-ibp")
    first = time.time() - t_start
    if compare == "auto":
        compare = 2 * first <= budget_s  # CROWN-IBP costs about as much as stochastic GM-CROWN-IBP
        if not compare and not quiet:
            print(f"(skipping the CROWN-IBP comparison: the first run took {first:.0f}s of the {budget_s:.0f}s "
                  "budget; run `gmbound demo --compare` to force it)")
    if compare:
        one("crown-ibp")
    plot_drawdown(results, out / "drawdown.png", title="demo: embedded MNIST subset")
    total = time.time() - t_start
    if not quiet:
        print()
        for method, (res, t_train, t_all) in tables.items():
            print(f"{method}: trained in {t_train:.1f}s (+{t_all - t_train:.1f}s eval); {res.n_samples} test "
                  f"images; standard error {100 * res.standard_error:.1f}%; errors (%) by verifier and PGD:")
            print(format_table(res, DEMO_EPS))
            print()
        print(f"demo finished in {total:.1f}s; results in {out}/ (eval_*.csv, eval_*.json, drawdown.png)")
    return {"seconds": total, "results": {m: r.to_dict() for m, (r, _, _) in tables.items()}}


def _cmd_demo(args: argparse.Namespace) -> int:
    check_output_folder(args.out, "--out")
    compare = True if args.compare else (False if args.no_compare else "auto")
    run_demo(args.out, compare=compare, budget_s=args.budget)
    return 0


# ----------------------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``gmbound eval: error: ...``), status 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="gmbound", description="Certified-robust training with GM-CROWN-IBP.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from a YAML config")
    t.add_argument("--config", help="YAML config file (see configs/)")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.epochs=2")
    t.add_argument("--resume", nargs="?", const="", default=None, metavar="RUN",
                   help="continue from the run's checkpoint (with --config: its out_dir; else a run folder "
                        "or checkpoint file)")
    t.add_argument("--overwrite", action="store_true", help="start again even if out_dir holds a checkpoint")
    t.add_argument("--loss-fusion", action="store_true",
                   help="bound the cross-entropy with one CROWN-IBP row per (radius, sample) (train.loss_fusion=true)")
    t.add_argument("--stop-after-epoch", type=positive_int, default=None, help=argparse.SUPPRESS)
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("eval", help="standard / verified / PGD error over an eps grid")
    e.add_argument("--checkpoint", nargs="+", required=True, help="one or more checkpoints (overlaid in the plot)")
    e.add_argument("--eps-grid", help="start:stop:step (stop included) or a comma list, e.g. 0:0.5:0.01")
    e.add_argument("--verifiers", help="comma list of ibp, crown-ibp, crown")
    e.add_argument("--pgd-steps", type=non_negative_int)
    e.add_argument("--pgd-restarts", type=positive_int)
    e.add_argument("--pgd-step-size", type=positive_float)
    e.add_argument("--pgd-loss", choices=("ce", "margin"),
                   help="attack loss: ce (cross-entropy) or margin (max_j f_j - f_y, the stronger one)")
    e.add_argument("--pgd-eps-grid", help="radii PGD attacks, a subset of the eps grid (default: all of it)")
    e.add_argument("--batch-size", type=positive_int)
    e.add_argument("--radii-chunk", type=positive_int, help="radii bounded per engine call")
    e.add_argument("--test-subset", type=positive_int, help="first n test images")
    e.add_argument("--dtype", choices=("float32", "float64"))
    e.add_argument("--crown-max-neurons", type=non_negative_int,
                   help="run full CROWN only up to this many ReLU neurons")
    e.add_argument("--exhaustive", action="store_true",
                   help="bound every radius of the grid and attack every unbroken sample at every PGD radius "
                        "(default: per sample the largest certified radius by bisection over the grid, PGD only "
                        "where neither certified nor broken; IBP numbers are the same; CROWN-IBP's are as "
                        "sound and can differ either way at a few samples, its bound not being monotone in eps)")
    e.add_argument("--no-pgd-audit", action="store_true",
                   help="bisection mode: skip the one attack per certified sample at its largest certified radius")
    e.add_argument("--data-dir", help="override the checkpoint config's data.dir")
    e.add_argument("--device", type=device_spec, default="auto", help="auto, cpu, cuda or cuda:<index>")
    e.add_argument("--threads", type=positive_int, help="torch CPU threads")
    e.add_argument("--label", nargs="+", help="one label per checkpoint")
    e.add_argument("--out", help="output folder (default: <first checkpoint's folder>/eval)")
    e.add_argument("--plot", help="PNG path (default: <out>/drawdown.png)")
    e.add_argument("--title")
    e.add_argument("--no-strict", action="store_true", help="do not fail on unsound bounds (still reported)")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=_cmd_eval)

    c = sub.add_parser("certify", help="per-sample largest certified radius and certified-accuracy curve")
    c.add_argument("--checkpoint", required=True)
    c.add_argument("--verifiers", default="ibp,crown-ibp")
    c.add_argument("--eps-max", type=positive_float, help="search cap (default: 2 x eps_train)")
    c.add_argument("--rounds", type=positive_int, default=4)
    c.add_argument("--k", type=positive_int, default=8, help="radii per sample per round")
    c.add_argument("--batch-size", type=positive_int, default=256)
    c.add_argument("--test-subset", type=positive_int)
    c.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    c.add_argument("--data-dir")
    c.add_argument("--device", type=device_spec, default="auto", help="auto, cpu, cuda or cuda:<index>")
    c.add_argument("--threads", type=positive_int, help="torch CPU threads")
    c.add_argument("--label")
    c.add_argument("--out")
    c.set_defaults(func=_cmd_certify)

    pl = sub.add_parser("plot", help="overlay eval JSON files as drawdown curves")
    pl.add_argument("results", nargs="+", help="eval JSON files")
    pl.add_argument("-o", "--output", required=True, help="PNG path")
    pl.add_argument("--label", nargs="+")
    pl.add_argument("--title")
    pl.add_argument("--per-verifier", action="store_true", help="also draw each verifier's curve")
    pl.set_defaults(func=_cmd_plot)

    d = sub.add_parser("demo", help="train GM-CROWN-IBP (and CROWN-IBP) on the bundled MNIST subset")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--compare", action="store_true", help="always train the CROWN-IBP comparison")
    d.add_argument("--no-compare", action="store_true", help="skip the CROWN-IBP comparison run")
    d.add_argument("--budget", type=non_negative_float, default=DEMO_BUDGET_S,
                   help="seconds; the comparison runs only if it is predicted to fit (default 180)")
    d.set_defaults(func=_cmd_demo)
    return p


def _error_classes() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(bad input -> status 2, a run that failed -> status 1)."""
    from .checkpoint import CheckpointError
    from .data import DataError
    from .evaluate import UnsoundBoundError
    from .runlock import RunLockedError
    from .train import DistributedRunError, TrainingDivergedError
    from .validation import BoundInputError

    return ((ConfigError, DataError, CheckpointError, RunLockedError, BoundInputError, OSError),
            (TrainingDivergedError, UnsoundBoundError, DistributedRunError))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line ``argv``; returns the exit status (usage errors too, instead of exiting)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help (0) or a usage error (2), already printed
        return stop.code if isinstance(stop.code, int) else 2
    if args.command == "train" and args.resume and "=" in args.resume:
        # "--resume key=value ...": the flag took no path, the word is an override
        args.overrides.insert(0, args.resume)
        args.resume = ""
    bad_input, failed = _error_classes()
    try:
        return args.func(args)
    except bad_input as err:
        print(f"gmbound {args.command}: error: {str(err).strip() or type(err).__name__}", file=sys.stderr)
        return 2
    except failed as err:
        print(f"gmbound {args.command}: error: {str(err).strip() or type(err).__name__}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

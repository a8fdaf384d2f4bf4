"""Table 3 summary: our numbers (mean and min-max over seeds) beside the paper's, and Fig. 3a/3b.

Run from the repository root after finish_arm.sh:  python3 results/mnist_table3/summarize.py [FOLDER [--beside OTHER]]
(FOLDER: results/mnist_table3 by default; results/mnist_table3_full for the 200-epoch arms).
Reads FOLDER/<arm>/eval_<arm>.json (arm = eps<E>_<method>[-<variant>]_s<seed>) and
writes summary.md (tables) and drawdown_eps<E>_verified.png / drawdown_eps<E>_pgd.png into FOLDER.
An arm first evaluated on a coarser grid may also hold ``verify_0.01/eval_<arm>.json``: its
verification redone on the 0.01 grid without PGD; its verified errors are used, PGD from the first run.
"""
from __future__ import annotations

import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ARM = re.compile(r"eps(?P<eps>[0-9.]+)_(?P<method>[a-z-]+?)(?:-(?P<variant>uniform|exact\S*|n\d+\S*))?_s(?P<seed>\d+)$")

# Liang et al., FITEE 24(10), 2023, Table 3 (MNIST): standard error, and verified error per eps_eval (%)
PAPER = {
    ("0.5", "ibp"): (46.38, {0.2: 62.79, 0.3: 72.14, 0.4: 81.92}),
    ("0.5", "crown-ibp"): (17.13, {0.2: 36.19, 0.3: 48.55, 0.4: 65.48}),
    ("0.5", "gm-crown-ibp"): (7.98, {0.2: 16.00, 0.3: 24.03, 0.4: 43.73}),
    ("0.6", "ibp"): (30.34, {0.25: 61.73, 0.35: 88.70}),
    ("0.6", "crown-ibp"): (16.47, {0.25: 48.85, 0.35: 80.72}),
    ("0.6", "gm-crown-ibp"): (17.10, {0.25: 31.25, 0.35: 50.14}),
}
METHODS = ("ibp", "crown-ibp", "gm-crown-ibp")


def with_fine_verification(data: dict, fine: dict) -> dict:
    """One arm's evaluation on its grid, its verification redone on a finer grid without PGD
    (``verify_0.01/``): the finer grid's verified errors, with PGD where the first run attacked.
    The two runs must agree where their radii meet (same model, deterministic bounds)."""
    assert fine["pgd"]["steps"] == 0, "the fine re-run is verification only"
    for i, e in enumerate(data["eps"]):
        j = next(j for j, f in enumerate(fine["eps"]) if abs(e - f) < 1e-9)
        for col in data["verified_error"]:
            assert abs(data["verified_error"][col][i] - fine["verified_error"][col][j]) < 1e-9, (e, col)
    assert abs(data["standard_error"] - fine["standard_error"]) < 1e-9
    pgd = {round(e, 9): v for e, v in zip(data["eps"], data["pgd_error"]) if v is not None}
    merged = dict(fine)
    merged["pgd_error"] = [pgd.get(round(e, 9)) for e in fine["eps"]]
    merged["pgd"] = data["pgd"]
    return merged


def load_arms(root: Path = HERE) -> dict[tuple[str, str], list[dict]]:
    """(eps_train, method[-variant]) -> eval JSONs, one per seed, of the arms in ``root``."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        m = ARM.match(folder.name)
        files = list(folder.glob("eval_*.json"))
        if not m or not files:
            continue
        data = json.loads(files[0].read_text())
        fine = list((folder / "verify_0.01").glob("eval_*.json"))
        if fine:
            data = with_fine_verification(data, json.loads(fine[0].read_text()))
        data["seed"] = int(m["seed"])
        key = m["method"] + (f"-{m['variant']}" if m["variant"] else "")
        groups[(m["eps"], key)].append(data)
    return groups


def at(data: dict, column: str, eps: float) -> float | None:
    """Error (%) of one eval JSON at radius ``eps``; column: ibp, crown-ibp, any, pgd, standard."""
    if column == "standard":
        return 100 * data["standard_error"]
    for i, e in enumerate(data["eps"]):
        if abs(e - eps) < 1e-9:
            value = {"any": data["verified_error_any"], "pgd": data["pgd_error"]}.get(column)
            value = value[i] if value is not None else data["verified_error"][column][i]
            return None if value is None else 100 * value
    return None


def spread(values: list[float | None]) -> str:
    """``mean [min-max]`` over seeds (just the value for one seed)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.2f}"
    return f"{statistics.mean(vals):.2f} [{min(vals):.2f}-{max(vals):.2f}]"


def tables(groups) -> str:
    lines = ["## Beside the paper's Table 3 (standard / IBP-verified error, %)", "",
             "Ours: mean [min-max] over seeds (n = seeds); paper: Liang et al. 2023, Table 3.", "",
             "| eps_train | eps_eval | method | n | ours: standard | ours: verified (IBP) | ours: verified (CROWN-IBP) "
             "| ours: verified (any) | ours: PGD | paper: standard / verified |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (eps_train, method), (paper_std, paper_ver) in PAPER.items():
        runs = groups.get((eps_train, method), [])
        for eps_eval, paper_v in paper_ver.items():
            cells = [spread([at(r, c, eps_eval) for r in runs]) for c in ("standard", "ibp", "crown-ibp", "any", "pgd")]
            lines.append(f"| {eps_train} | {eps_eval} | {method} | {len(runs)} | " + " | ".join(cells)
                         + f" | {paper_std:.2f} / {paper_v:.2f} |")
    extra = sorted(k for k in groups if k not in PAPER)
    if extra:
        lines += ["", "## Ablations (eps_train 0.5; standard / verified error %, IBP-verified unless noted)", "",
                  "| arm | n | standard | IBP @0.2 | IBP @0.3 | IBP @0.4 | IBP @0.5 | any @0.3 | PGD @0.3 |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for key in extra:
            runs = groups[key]
            cells = [spread([at(r, "standard", 0) for r in runs])]
            cells += [spread([at(r, "ibp", e) for r in runs]) for e in (0.2, 0.3, 0.4, 0.5)]
            cells += [spread([at(r, "any", 0.3) for r in runs]), spread([at(r, "pgd", 0.3) for r in runs])]
            lines.append(f"| eps{key[0]} {key[1]} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def steepest_step(data: dict, column: str = "ibp") -> tuple[float, float, float] | None:
    """The drawdown cliff: ``(eps, error at eps, error one grid step later)`` (%) of the largest rise of the
    verified-error curve between neighbouring radii of the grid (None on a grid of under two radii)."""
    curve = [(e, at(data, column, e)) for e in data["eps"]]
    curve = [(e, v) for e, v in curve if v is not None]
    steps = [(b[1] - a[1], a[0], a[1], b[1]) for a, b in zip(curve, curve[1:])]
    if not steps:
        return None
    _, e, before, after = max(steps)
    return e, before, after


def budgets(groups, other, label: str, other_label: str) -> str:
    """Each arm of ``groups`` beside the same (eps_train, method) of ``other`` (another training budget)."""
    cols = (0.1, 0.2, 0.3, 0.4)
    lines = [f"## {label} beside {other_label} (standard / IBP-verified error %, mean [min-max] over each budget's seeds)", "",
             "| eps_train | method | budget | n | standard | " + " | ".join(f"IBP @{e}" for e in cols)
             + " | steepest rise of the IBP curve (one 0.01 step) |",
             "|---|---|---|---|---|" + "---|" * len(cols) + "---|"]
    for key in sorted(groups):
        for name, runs in ((label, groups[key]), (other_label, other.get(key, []))):
            if not runs:
                continue
            cells = [spread([at(r, "standard", 0) for r in runs])]
            cells += [spread([at(r, "ibp", e) for r in runs]) for e in cols]
            cliffs = []
            for r in runs:
                c = steepest_step(r)
                if c is not None and abs(r["eps"][1] - r["eps"][0] - 0.01) < 1e-9:
                    cliffs.append(f"s{r['seed']}: {c[1]:.1f} -> {c[2]:.1f} at {c[0]:.2f}-{c[0] + 0.01:.2f}")
            lines.append(f"| {key[0]} | {key[1]} | {name} | {len(runs)} | " + " | ".join(cells) + " | "
                         + ("; ".join(cliffs) or "-") + " |")
    return "\n".join(lines) + "\n"


def figures(groups, root: Path = HERE, budget: str = "") -> list[Path]:
    """Fig. 3a (IBP-verified error vs eps) and 3b (total error under PGD), mean and min-max band."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    written = []
    for eps_train in sorted({k[0] for k in groups}):
        for kind, column, ylabel in (("verified", "ibp", "IBP-verified error (%)"),
                                     ("pgd", "pgd", "total error under PGD (%)")):
            fig, ax = plt.subplots(figsize=(6.4, 4.4))
            for method in sorted(k[1] for k in groups if k[0] == eps_train):
                runs = groups[(eps_train, method)]
                # seeds may be evaluated on different grids (seed 0 on 0.01, the others on 0.05): the
                # mean and the min-max band use the radii every seed has, and a finer seed is drawn whole
                grids = [[e for e in r["eps"] if at(r, column, e) is not None] for r in runs]
                eps = [e for e in grids[0] if all(any(abs(e - f) < 1e-9 for f in g) for g in grids)]
                curves = [[at(r, column, e) for e in eps] for r in runs]
                mean = [statistics.mean(c[i] for c in curves) for i in range(len(eps))]
                line, = ax.plot(eps, mean, lw=2, marker="." if (kind == "pgd" or len(runs) > 1) else None,
                                label=f"{method} (n = {len(runs)})")
                if len(runs) > 1:
                    ax.fill_between(eps, [min(c[i] for c in curves) for i in range(len(eps))],
                                    [max(c[i] for c in curves) for i in range(len(eps))],
                                    color=line.get_color(), alpha=0.2)
                    for r, grid in zip(runs, grids):
                        if len(grid) > len(eps):
                            ax.plot(grid, [at(r, column, e) for e in grid], lw=0.8, color=line.get_color(),
                                    alpha=0.7, label=f"{method}, seed {r['seed']} alone")
            ax.set_xlabel(r"$\epsilon_{eval}$ ($\ell_\infty$, pixels in [0, 1])")
            ax.set_ylabel(ylabel)
            ax.set_ylim(0, 101)
            ax.grid(alpha=0.3)
            ax.set_title(f"MNIST, DM-small{budget}, eps_train {eps_train}")
            ax.legend(fontsize=8, loc="upper left")
            fig.tight_layout()
            path = root / f"drawdown_eps{eps_train}_{kind}.png"
            fig.savefig(path, dpi=120)
            plt.close(fig)
            written.append(path)
    return written


if __name__ == "__main__":
    # summarize.py [FOLDER [--beside OTHER_FOLDER]]: OTHER_FOLDER's arms (another budget) in a table of their own
    args = sys.argv[1:]
    other_root = None
    if "--beside" in args:
        i = args.index("--beside")
        other_root = Path(args[i + 1]).resolve()
        del args[i:i + 2]
    root = Path(args[0]).resolve() if args else HERE
    groups = load_arms(root)
    text = tables(groups)
    if other_root is not None:
        text += "\n" + budgets(groups, load_arms(other_root), "200 epochs" if root != HERE else root.name,
                              "10 epochs" if other_root == HERE else other_root.name)
    (root / "summary.md").write_text(text)
    for p in figures(groups, root, ", 200 epochs" if root != HERE else ""):
        print("wrote", p.name)
    print((root / "summary.md").read_text())

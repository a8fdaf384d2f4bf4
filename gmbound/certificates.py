"""What counts as a certificate: every margin lower bound strictly positive, NaN never.

``(m <= 0).any(-1)`` reads a NaN margin as verified (every comparison with NaN is False), so a
model with one NaN weight would look perfectly robust. Every place that turns margins into
"verified" goes through ``verified_mask``, which asks the question the other way round.
"""
from __future__ import annotations

import warnings

import torch

from .specification import other_classes


def verified_mask(margins: torch.Tensor) -> torch.Tensor:
    """``True`` where every margin lower bound along the last axis is ``> 0`` (NaN fails): ``margins.shape[:-1]``.

    ``margins``: lower bounds of ``f_y - f_j`` (``j != y``), e.g. ``[N, B, n - 1]`` from
    ``BoundedSequential.margin_bounds``. A zero margin is a tie, not a certificate.
    """
    return (margins > 0).all(-1)


def clean_margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The clean margins ``f_y(x) - f_j(x)`` for ``j != y`` (ascending ``j``, as ``margin_spec``): ``[B, n - 1]``."""
    return logits.gather(1, y.unsqueeze(1)) - logits.gather(1, other_classes(y, logits.shape[1]))


def correct_mask(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``True`` where the clean prediction is ``y`` and every logit is finite: ``[B]``.

    ``argmax`` ranks NaN above every number, so a NaN logit could otherwise "predict" a class.
    """
    return (logits.argmax(1) == y) & torch.isfinite(logits).all(1)


def count_nonfinite(logits: torch.Tensor) -> int:
    """Number of samples (rows) with a NaN or infinite logit."""
    return int((~torch.isfinite(logits)).flatten(1).any(1).sum())


def warn_nonfinite(n_bad: int, n_total: int, where: str) -> None:
    """Warn (``RuntimeWarning``) that ``n_bad`` of ``n_total`` samples had non-finite logits."""
    if n_bad:
        warnings.warn(f"{where}: the model gives NaN or inf logits on {n_bad} of {n_total} samples (non-finite "
                      "weights or a diverged run?); they count as misclassified and never as verified",
                      RuntimeWarning, stacklevel=3)

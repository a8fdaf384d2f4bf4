"""Tiling the (radius, sample) rows of one bound call, so the working set of a step stays small.

Every (radius, sample) pair is bounded independently: the interval pass, Lambda and the bias
terms of one pair never read another pair's. So one call for ``N`` radii and ``B`` samples may be
split into tiles of ``n`` radii x ``b`` samples, each bounded on its own, and the results
concatenated: the same bounds, the same autograd graph in pieces.

Why: the CROWN backward pass holds Lambda ``[N, B, K, *S]``, which for N = 10 is tens to hundreds
of megabytes. Measured on a 2-core CPU (benchmarks/RESULTS.md), one such call cost more than ten
calls for one radius: the large temporaries leave the cache, and glibc serves allocations above
its mmap threshold (32 MB at most) with fresh pages, so each one is page-faulted and zeroed again
on every call. Tiles whose Lambda fits a budget of a few megabytes reuse heap memory and cache.

What is shared between radii (the clean logits, Lambda before the first ReLU, the centre of the
first layer) is recomputed per tile: small next to the rows. The interval pass of CROWN-IBP is not:
tiles that hold whole batches share one pass over several of them (``radii_per_interval_pass``).
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import torch

# Bytes of Lambda (or of the interval bounds) per tile, aimed at: a tile holds budget // row_bytes
# rows, but at least MIN_ROWS (fewer rows starve the products: DM-large, whose Lambda row is 1.8 MB,
# ran 1.5x slower in tiles of 4 rows than untiled). Measured on the 2-core AMD EPYC of
# benchmarks/RESULTS.md: 4 to 32 MB all gain 20-25 % on DM-small at B = 64, N = 10; 64 MB loses most of it.
# 32 MB rather than 16: DM-small's batch of 256 (115 KB a row) then stays whole in each tile instead of
# being split in two: at 2 threads -13 % (N = 1) and -8 % (N = 10) per step at B = 256 (1 thread: -3 %, 0 %),
# B = 64 unchanged, DM-large B = 8 -2 %.
DEFAULT_BUDGET_BYTES = 32 * 2 ** 20
MIN_ROWS = 16
# Passes of intervals only (IBP) hold no Lambda and keep every tile's intervals for the backward
# pass anyway, so small tiles only cost: the gm-ibp step (N = 10, forward and backward, 1 thread,
# same CPU) ran 1.13x slower than untiled on DM-large B = 64 in tiles of 20 rows and 1.37x on
# CIFAR cnn_7layer_bn B = 64 (16-row tiles), while tiles of at least 256 rows beat untiled on both
# DM-small B = 256 (0.70 s vs 0.87 s) and DM-large B = 64 (9.9 s vs 12.3 s).
MIN_ROWS_INTERVALS = 256


class Tiles(NamedTuple):
    """Radii per tile and samples per tile."""

    radii: int
    samples: int


def row_bytes(shapes: list[tuple[int, ...]], spec_rows: int, crown: bool, itemsize: int) -> int:
    """Bytes of the largest per-(radius, sample) tensor of a pass: Lambda ``[K, *S]`` or the bounds.

    ``shapes``: per-sample shapes of every layer; ``spec_rows``: rows of Lambda (K); ``crown``:
    whether a backward pass runs (else only intervals: lower, upper, centre and radius).
    """
    largest = max(math.prod(s) for s in shapes)
    return largest * itemsize * (max(1, spec_rows) if crown else 4)


def plan(n_radii: int, batch: int, row: int, budget: int = DEFAULT_BUDGET_BYTES, min_rows: int = MIN_ROWS) -> Tiles:
    """Tile sizes for ``n_radii x batch`` rows of ``row`` bytes each within ``budget``, at least ``min_rows`` a tile.

    Whole batches of radii are preferred (the products then see the full batch); the batch is
    split only when one radius of it exceeds the budget.
    """
    if budget <= 0:
        return Tiles(n_radii, batch)
    rows = max(min_rows, budget // max(1, row))
    if rows >= batch:
        return Tiles(min(n_radii, rows // batch), batch)
    return Tiles(1, rows)


def radii_per_interval_pass(tiles: Tiles, n_radii: int, batch: int, interval_row: int,
                            budget: int = DEFAULT_BUDGET_BYTES) -> int:
    """Radii that share one interval pass when CROWN-IBP runs in tiles of ``tiles.radii`` radii.

    The interval pass holds no Lambda, so it is cheap to run for more rows than a CROWN tile, and
    running it per CROWN tile re-reads every weight once per tile: on DM-large (a 512 x 25088 Linear),
    B = 8, N = 10, the Linear's interval forward + backward took 5 x 115 ms in 5 tiles against 195 ms
    in one pass (benchmarks/RESULTS.md). So whole CROWN tiles are grouped, up to the rows an interval
    tile would hold (``MIN_ROWS_INTERVALS`` or ``budget`` worth of ``interval_row`` bytes). Only
    when tiles hold the whole batch; otherwise each tile keeps its own pass (returns ``tiles.radii``).
    """
    if tiles.samples < batch or tiles.radii >= n_radii:
        return tiles.radii
    rows = max(MIN_ROWS_INTERVALS, budget // max(1, interval_row))
    return min(n_radii, max(1, rows // (tiles.radii * batch)) * tiles.radii)


def _split_batch(t: Optional[torch.Tensor], batch: int, start: int, stop: int, full_dim: int) -> Optional[torch.Tensor]:
    """Samples ``start:stop`` of a per-sample tensor; a tensor broadcast over the batch is kept whole."""
    if t is None or t.dim() < full_dim or t.shape[t.dim() - full_dim] != batch:
        return t
    return t.narrow(t.dim() - full_dim, start, stop - start)


def run_tiled(bound: Callable, tiles: Tiles, x: torch.Tensor, radii: torch.Tensor, x_min: Optional[torch.Tensor],
              x_max: Optional[torch.Tensor], C: Optional[torch.Tensor]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``bound(x, radii, x_min, x_max, C) -> (lower, upper or None)`` over tiles, concatenated.

    ``x``: ``[B, *S]``; ``radii``: ``[N, B]``; ``x_min``/``x_max``: broadcast against ``x``;
    ``C``: ``[B, K, n_out]`` or None. Results: ``[N, B, ...]``.
    """
    n_radii, batch = radii.shape
    if tiles.radii >= n_radii and tiles.samples >= batch:
        return bound(x, radii, x_min, x_max, C)
    lows, ups = [], []
    for b0 in range(0, batch, tiles.samples):
        b1 = min(batch, b0 + tiles.samples)
        xb = x[b0:b1]
        lo_b = _split_batch(x_min, batch, b0, b1, x.dim())
        hi_b = _split_batch(x_max, batch, b0, b1, x.dim())
        cb = C[b0:b1] if C is not None else None
        row_l, row_u = [], []
        for n0 in range(0, n_radii, tiles.radii):
            lower, upper = bound(xb, radii[n0:n0 + tiles.radii, b0:b1], lo_b, hi_b, cb)
            row_l.append(lower)
            row_u.append(upper)
        lows.append(torch.cat(row_l, 0) if len(row_l) > 1 else row_l[0])
        ups.append(None if row_u[0] is None else (torch.cat(row_u, 0) if len(row_u) > 1 else row_u[0]))
    lower = torch.cat(lows, 1) if len(lows) > 1 else lows[0]
    upper = None if ups[0] is None else (torch.cat(ups, 1) if len(ups) > 1 else ups[0])
    return lower, upper

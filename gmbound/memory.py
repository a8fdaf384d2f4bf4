"""How many identity rows full CROWN back-substitutes at once, from the memory it may use.

Full CROWN bounds a layer of ``d`` neurons by back-substituting ``2 d`` specification rows (each
neuron's lower and upper bound). ``k`` of them at once hold Lambda tensors ``[N, B, 2k, *S]`` for the
widest layer ``S`` below, a few alive at a time (Lambda, the relaxed Lambda and the next one), so the
memory grows as ``k * 2 N B S * itemsize * copies``. A fixed ``k`` does not fit every model: 512
rows of DM-large on MNIST at N = 8, B = 32 want about 110 GB. The chunk is therefore derived from a
budget: on CUDA half the free memory (``torch.cuda.mem_get_info``), on the CPU a cap, both capped by
the ``GMBOUND_CROWN_MEMORY`` environment variable when set (bytes, or a size such as ``4GiB``).
"""
from __future__ import annotations

import os
import re
from typing import Optional, Sequence, Union

import torch

ENV_VAR = "GMBOUND_CROWN_MEMORY"
CPU_BUDGET_BYTES = 2 * 2 ** 30   # default budget on the CPU
CUDA_FREE_FRACTION = 0.5         # of the free memory on CUDA: the rest is the caller's and the allocator's
LIVE_COPIES = 4                  # Lambda-sized tensors alive at once in one back-substitution step

_UNITS = {"": 1, "b": 1, "k": 2 ** 10, "kb": 10 ** 3, "kib": 2 ** 10, "m": 2 ** 20, "mb": 10 ** 6,
          "mib": 2 ** 20, "g": 2 ** 30, "gb": 10 ** 9, "gib": 2 ** 30, "t": 2 ** 40, "tb": 10 ** 12,
          "tib": 2 ** 40}


def parse_size(text: str) -> int:
    """``"4GiB"``, ``"512 MB"``, ``"1e9"`` -> bytes; a clear ValueError otherwise."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS:
        raise ValueError(f"{ENV_VAR}={text!r}: expected a size in bytes such as 4GiB, 512MiB or 1e9")
    size = int(float(m.group(1)) * _UNITS[unit])
    if size <= 0:
        raise ValueError(f"{ENV_VAR}={text!r}: the size must be positive")
    return size


def memory_budget(device: Union[torch.device, str]) -> int:
    """Bytes full CROWN may use for its Lambda tensors on ``device``."""
    device = torch.device(device)
    cap = os.environ.get(ENV_VAR)
    cap_bytes = parse_size(cap) if cap else None
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        budget = int(free * CUDA_FREE_FRACTION)
        return min(budget, cap_bytes) if cap_bytes else budget
    return cap_bytes if cap_bytes else CPU_BUDGET_BYTES


def crown_chunk(rows: int, n_radii: int, batch: int, widest: int, dtype: torch.dtype,
                device: Union[torch.device, str], budget: Optional[int] = None) -> int:
    """Identity rows per back-substitution so that its Lambda tensors fit ``budget`` bytes.

    ``rows``: the neurons of the layer bounded; ``widest``: the largest per-sample layer size the
    back-substitution passes through. At least 1 (a single row is the least full CROWN can do),
    at most ``rows``.
    """
    if budget is None:
        budget = memory_budget(device)
    itemsize = torch.empty((), dtype=dtype).element_size()
    per_row = 2 * max(1, n_radii) * max(1, batch) * max(1, widest) * itemsize * LIVE_COPIES
    return int(max(1, min(rows, budget // per_row)))


def widest_layer(shapes: Sequence[Sequence[int]]) -> int:
    """The largest per-sample size among layer shapes."""
    best = 1
    for shape in shapes:
        n = 1
        for s in shape:
            n *= int(s)
        best = max(best, n)
    return best

"""Keep freed CPU memory for reuse instead of returning it to the operating system (glibc only).

PyTorch's CPU tensors come from ``malloc``. glibc serves blocks above its mmap threshold (at most
32 MB) with fresh pages from the kernel and hands them back on ``free``; a bound step allocates
Lambda-sized blocks (tens to hundreds of MB) again and again, so every step page-faults and zeroes
its memory anew. Measured on DM-large MNIST (B = 8, 1 thread): 20-22 % of the step's CPU time at
N = 1 and 7-8 % at N = 10 was the kernel's (``benchmarks/RESULTS.md``). Raising the mmap and trim
thresholds makes glibc keep freed blocks and reuse them.

The settings are process-wide, so the library never changes them by itself: ``gmbound train`` does
on CPU (config key ``keep_freed_memory``), and a program of its own may call
:func:`keep_freed_memory`. The cost is resident memory: the process keeps its peak.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from typing import Optional

M_TRIM_THRESHOLD = -1   # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 2 ** 30      # blocks up to 1 GiB come from the heap and are reused
TRIM_THRESHOLD_BYTES = 2 ** 31 - 1  # never shrink the heap (mallopt takes an int)


def _libc() -> Optional[ctypes.CDLL]:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None


def keep_freed_memory() -> bool:
    """Make glibc's ``malloc`` keep and reuse freed memory in this process; True when it did.

    False (and nothing changed) where the C library is not glibc (macOS, musl, Windows).
    """
    libc = _libc()
    if libc is None:
        return False
    ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    return libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1 and ok

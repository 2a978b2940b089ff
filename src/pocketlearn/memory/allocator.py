"""The C allocator's settings for a training loop: freed tensors' memory is kept for the next step.

glibc serves allocations above its mmap threshold (from 128 KiB, adjusted as the process runs) with fresh pages
from the kernel and unmaps them when they are freed. A training step frees and re-allocates the same large
tensors every step, so each step page-faults them in again: a next-word model's (384 x 10,000) logits and their
gradient cost ~3 ms of page faults a step, ~10% of the simulator's keyboard round. Raised thresholds keep that
memory in the heap, where the next step finds it already mapped. The cost: memory freed after the peak is kept
(up to ``KEPT_BYTES``) instead of returned to the system, and a heap fragments where mapped blocks would not
(the simulator benchmark's peak RSS rose 0-8%). So it is for the simulator, not for a step measured against a
device's memory budget.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD = -1  # mallopt's parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
LARGEST_FROM_HEAP = 32 << 20  # glibc's ceiling for the mmap threshold on 64-bit systems
KEPT_BYTES = 256 << 20  # free memory at the heap's top beyond this goes back to the system


@functools.cache
def keep_freed_memory() -> bool:
    """Raise glibc's thresholds once per process; False where the C library is not glibc (nothing changes)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, LARGEST_FROM_HEAP)) and bool(mallopt(M_TRIM_THRESHOLD, KEPT_BYTES))

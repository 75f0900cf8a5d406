"""The agent's C heap, tuned for the megabyte buffers it relays (a job's output, image pages).

glibc gives a freed block at the top of the heap back to the kernel once more than the trim
threshold is free, and serves big blocks with mmap; both adapt to the largest block freed so far,
up to a few MiB. The agent allocates and frees a 1 MiB buffer several times per megabyte relayed
(the read of a job's pipe, the frame, its ciphertext), so with the defaults each one was mapped
afresh: 256 page faults and a zeroing per MiB, which cost a job's output, after a move, half of
its throughput (docs/migration.md, "stdio at pipe speed"). Kept: at most TRIM_BYTES of free heap.
"""

from __future__ import annotations

import contextlib
import ctypes

#: mallopt(3) parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
#: Blocks up to this size come from the heap (the channel's largest frame is 4 MiB).
MMAP_BYTES = 4 * 1024 * 1024
TRIM_BYTES = 32 * 1024 * 1024
TOP_PAD_BYTES = 8 * 1024 * 1024


def tune() -> bool:
    """Set the thresholds above; False where the C library has no mallopt (not glibc)."""
    with contextlib.suppress(OSError, AttributeError):
        mallopt = ctypes.CDLL(None).mallopt
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt.restype = ctypes.c_int
        return all(
            mallopt(param, value) == 1
            for param, value in (
                (_M_MMAP_THRESHOLD, MMAP_BYTES),
                (_M_TRIM_THRESHOLD, TRIM_BYTES),
                (_M_TOP_PAD, TOP_PAD_BYTES),
            )
        )
    return False

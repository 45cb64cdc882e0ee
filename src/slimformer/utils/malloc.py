"""Keep freed memory in the process instead of handing it back to the OS after every step.

glibc serves big blocks (over 128 KB-32 MB) with ``mmap`` and unmaps them on ``free``; a
training step frees and re-allocates the same big tensors each time (the dense gradient of a
30k x 384 word-embedding matrix alone is 47 MB), and every page of the new mapping is faulted
in and zeroed again. Measured on a 3-layer MiniLM student (bf16, batch 32, 2 cores): ~22,000
page faults and ~50 ms of a ~220 ms step. With mmap off and a high trim threshold the memory is
reused from the heap (~0 faults), as jemalloc/tcmalloc would do. Other C libraries: no-op.

Leaving the block cannot give glibc its dynamic mmap threshold back: any ``mallopt`` of these
parameters switches it off for good. Its static default (128 KB) would then ``mmap`` and unmap
every block over 128 KB for the rest of the process: the SST-2 teacher's forward then took
1.3-1.9x as long, and TextBrewer's training 10-17% longer, in the same process
(benchmarks/malloc_state.py, docs/benchmarks.md).
So the block ends on the values the dynamic threshold settles at in a process that frees big
tensors: blocks up to 32 MB (64-bit) come from the heap, and free heap memory over 64 MB is
returned to the OS.
"""

import ctypes
import ctypes.util
import logging
import platform
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("slimformer")

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
KEPT_TRIM_THRESHOLD = 1 << 30  # return heap memory to the OS only above 1 GiB free at its top
# afterwards: where glibc's dynamic threshold settles (its DEFAULT_MMAP_THRESHOLD_MAX, and the
# trim threshold it keeps at twice that), and its default count of mmapped blocks
SETTLED_MMAP_THRESHOLD = 4 * 1024 * 1024 * ctypes.sizeof(ctypes.c_long)
SETTLED_TRIM_THRESHOLD = 2 * SETTLED_MMAP_THRESHOLD
DEFAULT_MMAP_MAX = 65536


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


@contextmanager
def keep_freed_memory(enabled: bool = True) -> Iterator[bool]:
    """Within the block, big allocations come from the heap and freed memory stays there;
    afterwards blocks over 32 MB are mmapped again and free heap memory over 64 MB goes back
    to the OS (glibc's settled dynamic values, see above). Yields whether the setting took
    effect."""
    libc = _glibc() if enabled else None
    applied = bool(libc) and all(
        libc.mallopt(p, v) == 1
        for p, v in ((M_TRIM_THRESHOLD, KEPT_TRIM_THRESHOLD), (M_MMAP_MAX, 0))
    )
    if enabled and not applied:
        log.debug("keep_freed_memory: not glibc, the allocator is left as it is")
    try:
        yield applied
    finally:
        if applied:
            libc.mallopt(M_MMAP_THRESHOLD, SETTLED_MMAP_THRESHOLD)
            libc.mallopt(M_TRIM_THRESHOLD, SETTLED_TRIM_THRESHOLD)
            libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)

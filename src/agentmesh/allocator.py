"""glibc's allocator, told to keep the large buffers a streaming process recycles.

A node streams output in chunks of up to 1 MiB (`agentmesh.node.process.CHUNK_BYTES`):
each one is read, decoded, put in a message and serialized, a few 1 MiB buffers a chunk.
glibc's defaults return such buffers to the kernel almost as soon as they are freed (the
heap's top is trimmed past twice the largest freed buffer), so the next chunk's buffers
are new pages, each faulted in and zeroed again: one or two page faults per 4 KiB
streamed, the larger part of the node's CPU per megabyte (measured in bench/node.py).

Raising both thresholds keeps buffers below `MMAP_THRESHOLD` on the heap and lets up to
`TRIM_THRESHOLD` of free memory stay at its top for reuse. Setting either one disables
glibc's own adjustment of both, so both are set. Elsewhere (musl, macOS) nothing changes.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

# mallopt's parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

# Above a chunk, its decoded text (up to 4 bytes a character) and gRPC's frames of it.
MMAP_THRESHOLD = 8 << 20
# A few chunks in flight for each of several streaming tasks.
TRIM_THRESHOLD = 64 << 20


def keep_large_buffers() -> bool:
    """Set the thresholds for this process; whether glibc took them."""
    try:
        # The process's own symbols, libc's among them (find_library would run ldconfig).
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False  # no mallopt here
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    taken = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    if not taken:
        log.debug("the allocator kept its thresholds (mallopt refused)")
    return taken

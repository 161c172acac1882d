"""Training on CPU: keep freed memory in the process, so each step's big tensors are not faulted in again.

glibc's ``malloc`` serves an allocation above its mmap threshold (which it raises, but never above
32 MiB) with a fresh ``mmap`` and unmaps it on ``free``; it also gives the free top of its heap back
to the operating system. A training step on CPU allocates the same large tensors every step and
frees them at the end of it: the dense gradient of a student's 30,522 x 384 word-piece embedding
(47 MB), the recurrent layers' gradient buffers, the activations. Memory that was handed back comes
back as fresh zero pages, and every 4 KiB page costs a page fault the first time it is written, on
every step. :func:`keep_freed_memory` tells glibc to serve every allocation from its heap
(``M_MMAP_MAX = 0``) and to keep the freed memory there for the next step (``M_TRIM_THRESHOLD``),
as jemalloc or tcmalloc do when preloaded. The arithmetic is unchanged (only where tensors live
changes); the cost is that the process keeps its peak memory until it exits. ``tools/
bench_host_memory.py`` measures the effect side by side (docs/results.md).

``blocks train`` on CPU applies it; ``DISTILBLOCKS_MALLOC=system`` in the environment turns it off.
It does nothing on other C libraries (macOS, musl), where the call is not available.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

ENVIRONMENT = "DISTILBLOCKS_MALLOC"
M_TRIM_THRESHOLD = -1  # from glibc's <malloc.h>
M_MMAP_MAX = -4
KEEP_UP_TO = 2**31 - 1  # the largest trim threshold mallopt takes (an int): keep up to 2 GiB of free heap top

_state: str | None = None  # what the first call decided, reported by every later one


def keep_freed_memory() -> str:
    """Apply the setting once per process; returns a line saying what the process allocator does."""
    global _state
    if _state is None:
        _state = _apply()
    return _state


def _apply() -> str:
    if os.environ.get(ENVIRONMENT, "").strip().lower() == "system":
        return f"system default ({ENVIRONMENT}=system)"
    if not sys.platform.startswith("linux"):
        return "system default (not Linux)"
    library = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(library or "libc.so.6")
        mallopt = libc.mallopt
        version = libc.gnu_get_libc_version
    except (OSError, AttributeError):
        return "system default (the C library is not glibc)"
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    version.restype = ctypes.c_char_p
    if not (mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, KEEP_UP_TO)):
        return "system default (glibc refused the setting)"
    return f"freed memory kept for reuse (glibc {version().decode()}: no mmap per allocation, no heap trimming)"

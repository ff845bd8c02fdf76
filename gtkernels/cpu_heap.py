"""Memory of a CPU training process: keep freed large blocks for the next step instead of returning them.

torch's CPU tensors come from ``malloc``. glibc serves every block above its mmap threshold (at most 32 MiB on
64-bit Linux, whatever ``mallopt`` asks) with a fresh ``mmap`` and gives it back with ``munmap`` when freed, so
every large activation of every training step is new memory that the kernel zero-fills page by page on first
touch. At the paper width the activations of a batch of 1,024 QM9 molecules are 37-150 MiB each: one training
step made 4.9 million page faults and spent 10.4 of its 79 CPU seconds in the kernel (batch 128: 82,000 faults,
0.17 s; with the cache 2,500 faults and 0.06 s: ``benchmarks/results/cpu-heap-paper-2026-12-03.md``). That is
most of why a batch of 1,024 was slower per molecule than a batch of 128.

:func:`keep_freed_memory` installs the block cache of ``gtkernels._C`` (``csrc/cpu/block_cache.cpp``) as torch's
CPU allocator: a freed block of 1 MiB or more is kept by size, and a later request of about its size (down to
8/9 of it) takes it back without a system call or a fault; at most ``limit_bytes`` stay cached (default: half
the machine's memory), the smallest go first. What it costs: the process holds its step's peak between steps
(a training process reaches that peak every step anyway), plus up to 1/16 of headroom per large block. Tried
and not used: glibc alone (:func:`keep_glibc_heap`: no mmap, no trim) removed 94 % of the faults of a
paper-width step, but how many depends on where blocks happen to lie (twelve 40 MiB tensors a step: no faults
left in four runs, 58 % in a fifth), since the 64-byte alignment torch asks for leaves small fragments beside
each block that keep it from merging; transparent huge pages (``THP_MEM_ALLOC_ENABLE=1``): 21× fewer faults but
twice the kernel time (zeroing and compacting 2 MiB pages). Without the compiled extension the glibc setting
is the fallback.

``gtkernels train`` calls it on CPU runs (not on CUDA, whose caching allocator already keeps memory; not with
``GTKERNELS_MALLOC=keep``, which leaves torch's allocator as it is). In a script of your own, call
``gtkernels.keep_freed_memory()`` once before training; it holds for the whole process, from the next
allocation on (blocks allocated before are freed as before).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from typing import Dict, Optional

#: glibc's mallopt parameter numbers (malloc.h), for the fallback.
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4

#: What the last :func:`keep_freed_memory` did: "" before any call.
STATE = ""


def _glibc():
    """glibc as a ctypes library, or None where the C library is another (musl, macOS, Windows)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def _half_the_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def keep_freed_memory(limit_bytes: Optional[int] = None, environ=os.environ) -> str:
    """Keep freed CPU blocks of 1 MiB and more for reuse (see the module docstring), at most ``limit_bytes`` of
    them (default: half the physical memory); returns what was done, also stored in :data:`STATE`. Leaves the
    allocator alone with ``GTKERNELS_MALLOC=keep``. Calling it again sets the limit."""
    global STATE
    if limit_bytes is not None and (isinstance(limit_bytes, bool) or not isinstance(limit_bytes, int)
                                    or limit_bytes < 0):
        raise ValueError(f"limit_bytes must be a non-negative int or None, got {limit_bytes!r}")
    if environ.get("GTKERNELS_MALLOC", "").strip().lower() == "keep":
        STATE = "left alone: GTKERNELS_MALLOC=keep"
        return STATE
    limit = _half_the_memory() if limit_bytes is None else limit_bytes
    from ._backends import extension_available
    if extension_available():
        import torch
        torch.ops.gtkernels_C.cpu_block_cache(limit)
        STATE = f"freed blocks of 1 MiB and more kept for reuse (at most {limit / 2 ** 30:.1f} GiB)"
        return STATE
    STATE = keep_glibc_heap()
    if STATE.startswith("left alone: not glibc"):
        STATE = "left alone: no gtkernels._C and the C library is not glibc"
    return STATE


def keep_glibc_heap() -> str:
    """The fallback without ``gtkernels._C``: glibc serves every block from its heap (``M_MMAP_MAX`` 0) and never
    returns the heap's top (``M_TRIM_THRESHOLD`` −1). Returns what was done."""
    libc = _glibc()
    if libc is None:
        return "left alone: not glibc"
    ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, -1) == 1
    return "freed memory kept in glibc's heap (no mmap, no trim)" if ok else "left alone: mallopt refused"


def block_cache_stats() -> Dict[str, int]:
    """The block cache's counters: ``installed`` (0/1), ``cached_bytes`` (free, kept), ``live_bytes`` (handed
    out), ``hits``, ``misses`` (large requests served from the cache / by a new block), ``limit_bytes``. All 0
    without ``gtkernels._C`` or before :func:`keep_freed_memory`."""
    keys = ("installed", "cached_bytes", "live_bytes", "hits", "misses", "limit_bytes")
    from ._backends import extension_available
    if not extension_available():
        return dict.fromkeys(keys, 0)
    import torch
    return dict(zip(keys, torch.ops.gtkernels_C.cpu_block_cache(-1)))


def empty_block_cache() -> int:
    """Frees every cached block (the counters stay); returns the bytes freed."""
    from ._backends import extension_available
    if not extension_available():
        return 0
    import torch
    return int(torch.ops.gtkernels_C.cpu_block_cache_empty())

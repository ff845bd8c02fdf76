"""Peak extra memory of a call: CUDA max-allocated on GPU; on CPU the process's peak resident set (Linux).

CPU, default (``GTK_BENCH_CPU_MEMORY=rss``): free heap pages are returned to the OS (``malloc_trim``), the
kernel's high-water mark of the resident set is reset (``/proc/self/clear_refs``, value 5), and after the call
the peak is ``VmHWM`` minus the resident set before it. That counts every byte the call touched, torch tensors,
the fused kernels' per-thread scratch and allocator overhead alike, at no cost to the call itself.
``GTK_BENCH_CPU_MEMORY=profiler`` instead sums torch's allocation events from ``torch.profiler`` (exactly torch's
tensors, nothing else). It is not the default because its cost grows with the number of ops: eager
gtkernels_py at 256 heads × d_k 2 runs einsum backward as ~130,000 small copies per call, and profiling one
forward+backward of a QM9 batch of 256 produced 1.4 M events, took 90 s instead of 2 s, and held 7.7 GB (the
1,024-molecule case was killed for memory). The RSS method falls back to the profiler where /proc is missing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import os
from typing import Optional

import torch
from torch.profiler import ProfilerActivity, profile

MIB = 2 ** 20


@functools.lru_cache(maxsize=1)
def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


@functools.lru_cache(maxsize=1)
def _rss_supported() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        _hwm_bytes()
        return True
    except OSError:
        return False


def cpu_method() -> str:
    want = os.environ.get("GTK_BENCH_CPU_MEMORY", "rss")
    return "rss" if want == "rss" and _rss_supported() else "profiler"


def method(device: torch.device) -> str:
    """How peaks are measured on ``device``: ``cuda-max-allocated``, ``rss-hwm`` or ``profiler``."""
    if device.type == "cuda":
        return "cuda-max-allocated"
    return "rss-hwm" if cpu_method() == "rss" else "profiler"


class PeakMeter:
    """``start()`` / ``stop()`` around one call (``stop`` returns the peak extra MiB); for the RSS and CUDA
    methods they cost nothing inside the call, so they can wrap a timed round (pytest-benchmark setup/teardown)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.method = method(device)
        self._before = 0
        self._prof: Optional[profile] = None

    def start(self) -> None:
        gc.collect()
        if self.method == "cuda-max-allocated":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._before = torch.cuda.memory_allocated(self.device)
        elif self.method == "rss-hwm":
            libc = _libc()
            if libc is not None and hasattr(libc, "malloc_trim"):
                libc.malloc_trim(0)  # freed heap pages back to the OS, so reusing them counts again
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")        # reset VmHWM to the current RSS
            self._before = _rss_bytes()
        else:
            self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            self._prof.__enter__()

    def stop(self) -> float:
        if self.method == "cuda-max-allocated":
            torch.cuda.synchronize(self.device)
            return (torch.cuda.max_memory_allocated(self.device) - self._before) / MIB
        if self.method == "rss-hwm":
            return max(_hwm_bytes() - self._before, 0) / MIB
        prof, self._prof = self._prof, None
        prof.__exit__(None, None, None)
        events = []
        for e in prof.events():
            delta = e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage
            if delta:
                events.append((e.time_range.start, delta))
        current = peak = 0
        for _, delta in sorted(events):
            current += delta
            peak = max(peak, current)
        return peak / MIB


def peak_extra_mib(fn, device: torch.device) -> float:
    """Run ``fn()`` once and return the peak memory it added, in MiB (see the module docstring)."""
    meter = PeakMeter(device)
    meter.start()
    try:
        fn()
    finally:
        peak = meter.stop()
    return peak

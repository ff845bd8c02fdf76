"""Peak extra memory of a call: CUDA max-allocated on GPU, resident-set high-water mark on CPU (Linux)."""
from __future__ import annotations

import re

import torch


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        return int(re.search(rf"{key}:\s+(\d+)", fh.read()).group(1))


def peak_extra_mib(fn, device: torch.device) -> float:
    """Run ``fn()`` once and return its peak memory above the level before the call, in MiB.

    CPU: resets the kernel's RSS high-water mark (``/proc/self/clear_refs``), so it counts every page the call
    touched, large tensors included (glibc returns them to the OS on free). Returns NaN where unsupported.
    """
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        before = _status_kib("VmRSS")
        fn()
        return (_status_kib("VmHWM") - before) / 1024
    except OSError:
        return float("nan")

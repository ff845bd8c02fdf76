"""Peak extra memory of a call: CUDA max-allocated on GPU, torch's CPU allocations on CPU."""
from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile


def peak_extra_mib(fn, device: torch.device) -> float:
    """Run ``fn()`` once and return the peak of the memory it allocated through torch, in MiB.

    CUDA: ``max_memory_allocated`` above the level before the call. CPU: the running sum of torch's
    allocation and free events (profiler with ``profile_memory``), in time order; memory a compiled kernel
    takes outside torch's allocator (small per-thread scratch tiles) is not counted.
    """
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = []
    for e in prof.events():
        delta = e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage
        if delta:
            events.append((e.time_range.start, delta))
    current = peak = 0
    for _, delta in sorted(events):
        current += delta
        peak = max(peak, current)
    return peak / 2**20

"""gtkernels.keep_freed_memory: freed large CPU blocks are kept for the next step's requests, so a training step's
large activations stop faulting fresh pages every step (why: gtkernels/cpu_heap.py; figures:
benchmarks/results/cpu-heap-paper-2026-12-03.md). The allocator holds for the whole process, so every check that
installs it runs in a fresh interpreter."""
import json
import os
import subprocess
import sys

import pytest

import gtkernels
from gtkernels import cpu_heap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_ext = pytest.mark.skipif(not gtkernels.extension_available(), reason="gtkernels._C not built")

#: Four "steps" of twelve ~40 MiB tensors (above glibc's largest mmap threshold, 32 MiB) and small ones, each
#: step's sizes a little off the last's (as QM9 batches are); prints per step its minor faults and a checksum.
STEPS = """
import json, resource, sys, torch
import gtkernels
torch.set_num_threads(1)
state = gtkernels.keep_freed_memory(int(sys.argv[1])) if sys.argv[1] != "none" else ""
faults, sums = [], []
for step, delta in enumerate((0, 3000, -2000, 1000)):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ts = [torch.full((10 * 2**20 + delta,), float(i + step)) for i in range(12)]
    small = [torch.ones(100) for _ in range(50)]
    sums.append(sum(float(t[0]) + float(t[-1]) for t in ts) + float(sum(s.sum() for s in small)))
    assert len({t.data_ptr() for t in ts}) == 12
    del ts, small
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
stats = gtkernels.cpu_heap.block_cache_stats()
freed = gtkernels.cpu_heap.empty_block_cache()
print(json.dumps(dict(state=state, faults=faults, sums=sums, stats=stats, freed=freed,
                      after=gtkernels.cpu_heap.block_cache_stats())))
"""


def _child_env() -> dict:
    """This environment without tests/conftest.py's GTKERNELS_MALLOC=keep."""
    env = {k: v for k, v in os.environ.items() if k != "GTKERNELS_MALLOC"}
    return dict(env, PYTHONPATH=ROOT)


def _steps(limit) -> dict:
    out = subprocess.run([sys.executable, "-c", STEPS, str(limit)], capture_output=True, text=True,
                         env=_child_env(), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _want_sums():
    return [sum(2.0 * (i + step) for i in range(12)) + 5000.0 for step in range(4)]


@needs_ext
def test_freed_large_blocks_are_reused_without_faults():
    got = _steps(8 << 30)
    assert got["state"].startswith("freed blocks of 1 MiB and more kept for reuse"), got["state"]
    assert got["sums"] == _want_sums()
    first = got["faults"][0]
    assert first > 12 * 10 * 2 ** 20 * 4 / 4096 / 2          # step 1 touches its ~480 MiB of new pages
    assert max(got["faults"][1:]) < first / 100, got["faults"]   # the next steps reuse them
    s = got["stats"]
    assert s["installed"] == 1 and s["misses"] == 12 and s["hits"] == 36 and s["live_bytes"] == 0
    assert s["cached_bytes"] >= 12 * 10 * 2 ** 20 * 4 and got["freed"] == s["cached_bytes"]
    assert got["after"]["cached_bytes"] == 0 and got["after"]["hits"] == 36


@needs_ext
def test_the_limit_bounds_what_stays_cached():
    got = _steps(100 << 20)
    assert got["sums"] == _want_sums()
    assert 0 < got["stats"]["cached_bytes"] <= 100 << 20
    assert got["stats"]["limit_bytes"] == 100 << 20


@needs_ext
def test_without_the_cache_nothing_is_counted():
    got = _steps("none")
    assert got["sums"] == _want_sums()
    assert got["stats"] == dict(installed=0, cached_bytes=0, live_bytes=0, hits=0, misses=0, limit_bytes=0)


@needs_ext
def test_blocks_freed_from_other_threads_come_back():
    code = """
import threading, torch, gtkernels
gtkernels.keep_freed_memory(1 << 30)
def work():
    for _ in range(20):
        t = torch.ones(2**19 + 7)        # 2 MiB: cached
        assert float(t.sum()) == 2**19 + 7
threads = [threading.Thread(target=work) for _ in range(4)]
[t.start() for t in threads]; [t.join() for t in threads]
s = gtkernels.cpu_heap.block_cache_stats()
assert s["live_bytes"] == 0 and s["hits"] + s["misses"] == 80 and s["misses"] <= 8, s   # 2 live a thread at most
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_child_env(),
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


@pytest.mark.parametrize("bad", [-1, 1.5, True, "8G"])
def test_bad_limit_is_a_value_error(bad):
    with pytest.raises(ValueError, match="limit_bytes must be a non-negative int"):
        cpu_heap.keep_freed_memory(bad)


def test_opt_out_leaves_the_allocator_alone():
    assert cpu_heap.keep_freed_memory(environ={"GTKERNELS_MALLOC": "keep"}) == "left alone: GTKERNELS_MALLOC=keep"
    assert cpu_heap.STATE == "left alone: GTKERNELS_MALLOC=keep"


def test_without_extension_or_glibc_it_is_left_alone(monkeypatch):
    import gtkernels._backends
    monkeypatch.setattr(gtkernels._backends, "extension_available", lambda: False)
    monkeypatch.setattr(cpu_heap, "_glibc", lambda: None)
    assert cpu_heap.keep_freed_memory(environ={}) == "left alone: no gtkernels._C and the C library is not glibc"
    assert cpu_heap.block_cache_stats()["installed"] == 0 and cpu_heap.empty_block_cache() == 0

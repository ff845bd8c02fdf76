"""The OpenMP wait policy of the package's CPU kernels, set before torch loads the OpenMP runtime.

torch's OpenMP runtime on Linux (libgomp, which the compiled kernels share) by default spins about 300,000
iterations at every barrier and after every parallel region before a waiting thread sleeps. With more runnable
threads than cores (other processes, several training ranks, a shared CI machine) a thread spinning at a
barrier holds the core that the thread it waits for needs: ``make demo`` ran at 9 mol/s instead of 388 with
2 threads on a loaded 2-core machine. A short spin keeps the unloaded speed and sleeps when the partner is
descheduled (figures: benchmarks/results/oversubscription-cpu.md, by ``python -m benchmarks.oversubscription``).

libgomp reads its settings once, when it is loaded, and torch loads it at import. So this module, imported by
``gtkernels/__init__.py`` before anything imports torch, sets ``GOMP_SPINCOUNT`` to :data:`SPIN_COUNT` when
torch is not imported yet and the user set none of ``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT`` and
``GTKERNELS_OMP_WAIT=keep``. The setting then holds for every OpenMP region of the process (torch's too), and
for child processes (DataLoader workers, torchrun ranks) that inherit the environment. Where torch was imported
first, nothing can be changed any more: set ``OMP_WAIT_POLICY=PASSIVE`` (or ``GOMP_SPINCOUNT``) in the
environment, or import gtkernels first. The gtkernels CLI always imports gtkernels first.
"""
from __future__ import annotations

import os
import sys

#: Iterations a waiting thread spins before it sleeps (libgomp: 300,000 by default, 100 when it sees more threads
#: than CPUs itself, 0 with OMP_WAIT_POLICY=PASSIVE). Measured on a loaded 2-core machine: 10,000 was still 6x
#: slower than PASSIVE; 100 and 1,000 were as fast as PASSIVE.
SPIN_COUNT = 100

#: What this module did at import: "set GOMP_SPINCOUNT=...", or why it left the runtime alone.
STATE = ""


def configure(environ=os.environ, modules=sys.modules) -> str:
    """Set the short spin in ``environ`` if it can still take effect and nobody chose otherwise; returns what
    was done (also stored in :data:`STATE`)."""
    if environ.get("GTKERNELS_OMP_WAIT", "").strip().lower() == "keep":
        return "left alone: GTKERNELS_OMP_WAIT=keep"
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        if environ.get(name):
            return f"left alone: {name}={environ[name]} set by the user"
    if "torch" in modules:
        return "left alone: torch was imported before gtkernels (its OpenMP runtime is already configured)"
    environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    return f"set GOMP_SPINCOUNT={SPIN_COUNT}"


STATE = configure()

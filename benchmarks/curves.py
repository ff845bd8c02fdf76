"""What the validation-curve studies share (``benchmarks/large_batch.py``, ``benchmarks/peers/time_to_accuracy.py``):
the run's provenance (UTC date, machine, load average), the markdown report with its plot, and the plot's
log-scale MAE axes. Plain Python and matplotlib (Agg); no torch."""
from __future__ import annotations

import datetime
import json
import os
import platform
from typing import List

MAE_LABEL = "validation U0 MAE (meV)"


def loadavg() -> List[float]:
    """The 1-, 5- and 15-minute load averages."""
    return list(os.getloadavg())


def load_text(load) -> str:
    """``load`` as "1.00 0.50 0.25" (a string, as older result files hold it, is kept)."""
    return load if isinstance(load, str) else " ".join(f"{x:.2f}" for x in load)


def provenance() -> dict:
    """``date`` (UTC, to the minute), ``machine`` (host, CPUs, architecture) and ``load_before``, taken when a
    study starts; :func:`finish` adds ``load_after``."""
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.node()}, {os.cpu_count()} CPUs, {platform.machine()}", "load_before": loadavg()}


def finish(summary: dict) -> dict:
    summary["load_after"] = loadavg()
    return summary


def publish(summary: dict, out: str, report) -> int:
    """Finishes ``summary`` (:func:`finish`), writes it to ``OUT.json`` and renders it with ``report(summary,
    out)``; returns 0, the exit status of a study's ``main``."""
    with open(out + ".json", "w") as fh:
        json.dump(finish(summary), fh, indent=1)
    report(summary, out)
    return 0


def pyplot():
    """matplotlib.pyplot on the Agg backend (no screen)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def mae_axes(*axes) -> None:
    """Log-scale MAE, grid on both scales' ticks."""
    for ax in axes:
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")


def write_markdown(out: str, lines: List[str], fig, alt: str) -> None:
    """``OUT.md`` (``lines``, then the plot as ``alt``) and ``OUT.png`` (``fig``); prints the markdown."""
    lines = [*lines, "", f"![{alt}]({os.path.basename(out)}.png)", ""]
    with open(out + ".md", "w") as fh:
        fh.write("\n".join(lines))
    fig.tight_layout()
    fig.savefig(out + ".png", dpi=110)
    print("\n".join(lines))

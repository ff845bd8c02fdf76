import collections
import os
import shlex
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load() -> str:
    try:
        with open("/proc/loadavg") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return "unknown"


SKIPPED = {}  # test id -> skip reason, written into the JSON's machine_info for the report


def _commit() -> str:
    """HEAD when the run starts (another session may commit while it runs), +dirty with uncommitted changes.
    Where the tree is no git checkout (a copy on a lent GPU machine), ``$GTK_COMMIT`` if set, else "unknown"."""
    fallback = os.environ.get("GTK_COMMIT") or "unknown"
    try:
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return fallback
    if not commit:
        return fallback
    return commit + ("+dirty" if dirty else "")


def pytest_configure(config):
    config._gtk_bench_start = (time.time(), _load(), _commit())
    if config.getoption("benchmark_disable", default=False):
        # With --benchmark-disable (the CI smoke) benchmarks.common.measure() makes its one call itself, under
        # the memory meter, and leaves the fixture unused on purpose: pytest-benchmark would warn once per test.
        config.addinivalue_line("filterwarnings", "ignore:Benchmark fixture was not used at all in this test"
                                                  ":pytest_benchmark.logger.PytestBenchmarkWarning")


def pytest_runtest_logreport(report):
    if report.skipped and isinstance(report.longrepr, tuple):
        SKIPPED[report.nodeid] = str(report.longrepr[2]).removeprefix("Skipped: ")


def pytest_benchmark_update_machine_info(config, machine_info):
    """What the report needs to say where the figures come from: device, versions, commit, load, command."""
    from benchmarks.common import DEVICE, FULL, MAX_CALL_S, TARGET_S, device_name, memory_budget, versions
    start, load_start, commit = getattr(config, "_gtk_bench_start", (time.time(), _load(), _commit()))
    machine_info["gtkernels"] = dict(
        device=device_name(), device_type=DEVICE.type, **versions(), commit=commit,
        command=shlex.join([os.path.basename(sys.executable), "-m", "pytest"] + list(config.invocation_params.args)),
        load_at_start=load_start, load_at_end=_load(), wall_s=round(time.time() - start, 1),
        memory_budget_gib=round(memory_budget() / 2**30, 1), max_call_s=MAX_CALL_S, target_s=TARGET_S, full=FULL,
        date=time.strftime("%Y-%m-%d %H:%M %Z"), skipped=dict(SKIPPED))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """One line per benchmark: median time, molecules/s, peak memory, speed-up and memory vs the eager reference."""
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks or session.disabled:
        return
    groups = collections.defaultdict(dict)
    for bench in session.benchmarks:
        groups[bench.group][bench.extra_info.get("label", bench.name)] = bench
    terminalreporter.write_sep("=", "gtkernels speed-up vs the eager reference (median); "
                                    "python -m benchmarks.report for tables and plots")
    for group, by_label in sorted(groups.items()):
        ref = by_label.get("reference")
        for label, bench in sorted(by_label.items()):
            med = bench.stats.median
            peak = bench.extra_info.get("peak_mib", float("nan"))
            line = (f"{group:<46} {label:<10} {med * 1e3:10.2f} ms  "
                    f"{bench.extra_info.get('molecules', 0) / med:10.0f} mol/s  peak {peak:9.1f} MiB")
            if ref is not None and bench is not ref:
                line += (f"  speed-up {ref.stats.median / med:7.2f}x  memory "
                         f"{peak / max(ref.extra_info.get('peak_mib', 1e-9), 1e-9):.3g}x")
            terminalreporter.write_line(line)

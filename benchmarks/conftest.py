import collections
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """One line per benchmark group: each backend's median time, molecules/s, speed-up and memory vs reference."""
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks or session.disabled:
        return
    groups = collections.defaultdict(dict)
    for bench in session.benchmarks:
        groups[bench.group][bench.extra_info.get("backend", bench.name)] = bench
    terminalreporter.write_sep("=", "gtkernels speed-up vs the eager reference (median)")
    for group, by_backend in sorted(groups.items()):
        ref = by_backend.get("reference")
        for backend, bench in sorted(by_backend.items()):
            med = bench.stats.median
            line = (f"{group:<40} {backend:<10} {med * 1e3:9.2f} ms  "
                    f"{bench.extra_info.get('molecules', 0) / med:10.0f} mol/s  "
                    f"peak {bench.extra_info.get('peak_mib', float('nan')):8.1f} MiB")
            if ref is not None and bench is not ref:
                line += (f"  speed-up {ref.stats.median / med:6.2f}x  memory "
                         f"{bench.extra_info.get('peak_mib', float('nan')) / max(ref.extra_info.get('peak_mib', 1e-9), 1e-9):.3g}x")
            terminalreporter.write_line(line)

"""The peer table in Markdown from the JSON lines ``pytest benchmarks/peers`` appends (one per case).

    python -m benchmarks.peers.report build/peers/results.jsonl > benchmarks/results/peers-DATE.md
"""
from __future__ import annotations

import json
import sys

from benchmarks.peers.models import cases
from benchmarks.peers.test_peers import MEASURES


def table(rows) -> str:
    order = list(cases())
    by = {(r["case"], r["mode"], r["batch"], r["threads"]): r for r in rows if "mol_per_s" in r}
    out = []
    for threads in sorted({k[3] for k in by}):
        out += [f"### {threads} thread(s), molecules/s", "",
                "| model (package) | params | " + " | ".join(f"{m} @{b}" for m, b in MEASURES)
                + " | peak MiB (train @128) | load (1 min) |", "|---|---:|" + "---:|" * (len(MEASURES) + 2)]
        for name in order:
            got = [by.get((name, m, b, threads)) for m, b in MEASURES]
            if not any(got):
                continue
            first = next(r for r in got if r)
            t128 = by.get((name, "train", 128, threads))
            loads = [r["load_before"][0] for r in got if r]
            out.append(f"| {first['label']} {first['version']} | {first['params'] / 1e6:.2f} M | "
                       + " | ".join(f"{r['mol_per_s']:.3g}" if r else "–" for r in got)
                       + f" | {t128['peak_rss_mib'] if t128 else '–'} | {min(loads):.1f}–{max(loads):.1f} |")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    path = (argv or sys.argv[1:])[0]
    with open(path) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

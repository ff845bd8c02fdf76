"""Turn a pytest-benchmark JSON of this suite into Markdown tables and log-log PNG plots.

    python -m pytest benchmarks/ --benchmark-json=results.json
    python -m benchmarks.report results.json [--out DIR] [--title TEXT]

Writes ``DIR/<name>.md`` (``<name>`` = the JSON's file name without ``.json``; DIR defaults to the JSON's folder)
and ``DIR/<name>-*.png``, and prints the Markdown. Per group (op, shape, heads × d_k, mode): each label's median
time, molecules/s (QM9 batches, training steps) or pairs/s (single systems), speed-up against the eager reference
and against torch.compile measured in the same run, peak memory and its ratio to the reference, and the ψω/φ
GFLOP/s (FLOPs as counted by ``benchmarks.common.pass_flops``). Plots: time and peak memory against N (single
systems) and against the batch size (QM9 batches, training steps), one line per label.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from typing import Dict, Iterable, List, Optional

FUSED = ("cpu", "triton", "cuda")
LABEL_ORDER = ("cpu", "triton", "cuda", "reference", "compile", "flex", "sdpa")
LABEL_TEXT = {"reference": "reference (eager gtkernels_py)", "cpu": "gtkernels cpu (fused C++)",
              "triton": "gtkernels triton", "cuda": "gtkernels cuda", "compile": "torch.compile(reference)",
              "flex": "FlexAttention (exact, 2 calls)", "sdpa": "SDPA, no gate (lower bound)"}
COLORS = {"cpu": "tab:green", "triton": "tab:olive", "cuda": "tab:cyan", "reference": "tab:red",
          "compile": "tab:orange", "flex": "tab:purple", "sdpa": "tab:gray"}
MEM_FLOOR_MIB = 0.01
MEMORY_TEXT = {"rss-hwm": "the process's resident-set high-water mark (VmHWM) minus the resident set before the call",
               "profiler": "the running sum of torch's allocation events (torch.profiler)",
               "cuda-max-allocated": "torch.cuda.max_memory_allocated minus the allocated memory before the call"}
# (memory plots are log-scale: a fused kernel's peak can be ~0 MiB of torch allocations)


class Row(dict):
    """One benchmark: extra_info plus ``median`` (s) and ``group``."""

    @property
    def label(self) -> str:
        return self.get("label", self.get("backend", "?"))


def load(path: str):
    with open(path) as fh:
        data = json.load(fh)
    rows = []
    for b in data.get("benchmarks", []):
        info = dict(b.get("extra_info", {}))
        info.update(group=b.get("group") or b.get("name"), median=b["stats"]["median"], name=b.get("name"),
                    stddev=b["stats"].get("stddev", 0.0), rounds_done=b["stats"].get("rounds", 0))
        rows.append(Row(info))
    return data, rows


def _order(label: str) -> int:
    return LABEL_ORDER.index(label) if label in LABEL_ORDER else len(LABEL_ORDER)


def _fmt_time(s: float) -> str:
    return f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.3g} s"


def _fmt_rate(x: float) -> str:
    if x >= 1e9:
        return f"{x / 1e9:.3g} G"
    if x >= 1e6:
        return f"{x / 1e6:.3g} M"
    if x >= 1e3:
        return f"{x / 1e3:.3g} k"
    return f"{x:.3g}"


def _ratio(a: Optional[float], b: Optional[float]) -> str:
    if a is None or b is None or b <= 0 or a < 0:
        return "–"
    if a == 0:
        return "≈0×"
    r = a / b
    return f"{r:.3g}×"


def throughput(row: Row) -> str:
    if row.get("family") == "single":
        return f"{_fmt_rate(row.get('pairs', 0) / row['median'])} pairs/s"
    return f"{_fmt_rate(row.get('molecules', 0) / row['median'])} mol/s"


def group_rows(rows: Iterable[Row]) -> Dict[str, List[Row]]:
    groups: Dict[str, List[Row]] = collections.defaultdict(list)
    for r in rows:
        groups[r["group"]].append(r)
    for g in groups.values():
        g.sort(key=lambda r: _order(r.label))
    return groups


def _group_key(rows: List[Row]):
    r = rows[0]
    op_order = {"attention": 0, "encoding": 1, "train_step": 2}
    fam = {"qm9": 0, "single": 1, "smoke": 2}
    return (op_order.get(r.get("op"), 9), fam.get(r.get("family"), 9), r.get("preset", ""), r.get("heads", 0),
            r.get("mode", ""), r.get("augmented", False), r.get("layout", ""), r.get("molecules", 0), r.get("n_max", 0))


def describe(row: Row) -> str:
    """One line describing a group's shape."""
    bits = []
    if row.get("family") == "single" or row.get("system") == "single":
        bits.append(f"one system of N = {row.get('n_max')} atoms")
    else:
        kind = "augmented QM9 batch (pairs merged 1e4 Å apart)" if row.get("augmented") else "QM9 batch"
        bits.append(f"{kind} of {row.get('molecules')} samples, {row.get('atoms')} atoms, N max {row.get('n_max')}, "
                    f"{row.get('layout')}")
    if row.get("op") == "train_step":
        bits.append(f"preset {row.get('preset')} ({row.get('layers')} blocks, d_model {row.get('d_model')}, "
                    f"{row.get('heads')} heads)")
    elif row.get("heads"):
        bits.append(f"{row.get('heads')} heads × d_k {row.get('d_k')}")
    bits.append(f"Σn² = {row.get('pairs', 0):,} pairs")
    if row.get("layout") == "padded":
        bits.append(f"B·N² = {row.get('dense_pairs', 0):,}")
    return "; ".join(bits)


def group_table(rows: List[Row]) -> List[str]:
    by = {r.label: r for r in rows}
    ref, comp = by.get("reference"), by.get("compile")
    lines = ["| label | median | throughput | vs reference | vs compile | peak MiB | memory vs reference | "
             "ψω/φ GFLOP/s | rounds |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        flops = r.get("psi_flops", 0)
        gflops = f"{flops / r['median'] / 1e9:.3g}" if flops else "–"
        peak = r.get("peak_mib")
        others = ref is not None and r is not ref
        name = r.label + (f" ({r['impl']})" if r.get("impl") else "")
        cells = [name, _fmt_time(r["median"]), throughput(r),
                 _ratio(ref["median"], r["median"]) if others else "–",
                 _ratio(comp["median"], r["median"]) if comp is not None and r is not comp else "–",
                 f"{peak:.3g}" if peak is not None else "–",
                 _ratio(peak, ref.get("peak_mib")) if others and peak is not None else "–",
                 gflops, str(r.get("rounds_done", ""))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def best_fused(rows: List[Row]) -> Optional[Row]:
    fused = [r for r in rows if r.label in FUSED]
    return min(fused, key=lambda r: r["median"]) if fused else None


def summary_table(groups: Dict[str, List[Row]]) -> List[str]:
    """One row per group: the fastest gtkernels fused backend against each alternative (time ratios, >1 = faster)."""
    lines = ["| group | fused | median | vs reference | vs compile | vs flex | vs sdpa (no gate) "
             "| memory vs reference |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, rows in sorted(groups.items(), key=lambda kv: _group_key(kv[1])):
        f = best_fused(rows)
        if f is None or rows[0].get("family") == "smoke":
            continue
        by = {r.label: r for r in rows}

        def vs(label):
            return _ratio(by[label]["median"], f["median"]) if label in by else "–"
        ref = by.get("reference")
        mem = _ratio(f.get("peak_mib"), ref.get("peak_mib")) if ref is not None else "–"
        lines.append(f"| {name} | {f.label} | {_fmt_time(f['median'])} | {vs('reference')} | {vs('compile')} | "
                     f"{vs('flex')} | {vs('sdpa')} | {mem} |")
    return lines


def not_fastest(groups: Dict[str, List[Row]]) -> List[str]:
    out = []
    for name, rows in sorted(groups.items(), key=lambda kv: _group_key(kv[1])):
        f = best_fused(rows)
        if f is None or rows[0].get("family") == "smoke":
            continue
        faster = [r for r in rows if r.label not in FUSED and r["median"] < f["median"]]
        for r in sorted(faster, key=lambda r: r["median"]):
            why = " (no gate: not the same computation)" if r.label == "sdpa" else ""
            out.append(f"- {name}: **{r.label}** {_fmt_time(r['median'])} vs {f.label} {_fmt_time(f['median'])} "
                       f"({f['median'] / r['median']:.2f}× faster){why}")
    return out


# -------------------------------------------------------------------------------------------------- plots
def _plot_series(ax, rows: List[Row], x_key: str, y_fn, label_fn, style_fn=None):
    series = collections.defaultdict(list)
    for r in rows:
        series[label_fn(r)].append((r[x_key], y_fn(r), r))
    for key, pts in sorted(series.items(), key=lambda kv: (_order(kv[1][0][2].label), kv[0])):
        pts.sort(key=lambda p: p[0])
        r0 = pts[0][2]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=COLORS.get(r0.label, None),
                linestyle=(style_fn(r0) if style_fn else "-"), label=key)


def make_plots(rows: List[Row], out_prefix: str) -> List[str]:
    """PNG files (log-log): time and peak memory vs N (single systems) and vs batch size (QM9 batches, steps)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def save(fig, suffix):
        path = f"{out_prefix}-{suffix}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    def mem(r):
        return max(r.get("peak_mib", MEM_FLOOR_MIB), MEM_FLOOR_MIB)

    def finish(ax, xlabel, ylabel, title):
        ax.set_xscale("log", base=2)
        xs = sorted({x for line in ax.get_lines() for x in line.get_xdata()})
        if xs:
            ax.set_xticks(xs, [f"{x:g}" for x in xs])
            ax.minorticks_off()
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)

    ops = collections.defaultdict(list)
    for r in rows:
        if r.get("family") == "smoke":
            continue
        ops[(r.get("op"), r.get("family"), r.get("heads"), r.get("mode"), r.get("preset"))].append(r)
    for (op, family, heads, mode, preset), rs in sorted(ops.items(), key=lambda kv: str(kv[0])):
        head_text = f"{heads}×{rs[0].get('d_k')} " if heads and op != "train_step" else ""
        what = f"{op} {preset + ' ' if preset else ''}{head_text}{mode}"
        tag = "-".join(str(x) for x in (op, family, preset, f"h{heads}" if head_text else "", mode) if x)
        tag = tag.replace("+", "")
        if family == "single":
            fig, axes = plt.subplots(1, 2, figsize=(10, 4))
            _plot_series(axes[0], rs, "n_max", lambda r: r["median"], lambda r: r.label)
            _plot_series(axes[1], rs, "n_max", mem, lambda r: r.label)
            finish(axes[0], "N (atoms, one system)", "median time per call (s)", f"time, {what}")
            finish(axes[1], "N (atoms, one system)", "peak extra memory (MiB)", f"memory, {what}")
            axes[0].legend(fontsize=7)
            save(fig, tag)
        else:
            variants = sorted({(r.get("augmented", False), r.get("layout")) for r in rs})
            fig, axes = plt.subplots(2, len(variants), figsize=(4.2 * len(variants), 7), squeeze=False)
            for col, (aug, layout) in enumerate(variants):
                sub = [r for r in rs if (r.get("augmented", False), r.get("layout")) == (aug, layout)]
                title = f"{'augmented ' if aug else ''}{layout}"
                _plot_series(axes[0][col], sub, "molecules", lambda r: r["median"], lambda r: r.label)
                _plot_series(axes[1][col], sub, "molecules", mem, lambda r: r.label)
                finish(axes[0][col], "batch size (samples)", "median time (s)", f"time, {what}, {title}")
                finish(axes[1][col], "batch size (samples)", "peak extra memory (MiB)", f"memory, {what}, {title}")
                axes[0][col].legend(fontsize=7)
            save(fig, tag)
    return written


# -------------------------------------------------------------------------------------------------- report
def render(data: dict, rows: List[Row], title: str, plots: List[str], json_name: str,
           notes: Iterable[str] = ()) -> str:
    meta = data.get("machine_info", {}).get("gtkernels", {})
    cpu = data.get("machine_info", {}).get("cpu", {})
    groups = group_rows(rows)
    out = [f"# {title}", ""]
    out += [f"- **Device:** {meta.get('device', cpu.get('brand_raw', '?'))} ({meta.get('device_type', '?')})",
            f"- **Software:** torch {meta.get('torch', '?')}, triton {meta.get('triton', '?')}, "
            + (f"CUDA {meta['cuda']}, " if meta.get("cuda") not in (None, "none") else "") +
            f"gtkernels {meta.get('gtkernels', '?')} at commit "
            f"{meta.get('commit', data.get('commit_info', {}).get('id', '?'))}, "
            f"Python {data.get('machine_info', {}).get('python_version', '?')}",
            f"- **Date:** {meta.get('date', data.get('datetime', '?'))}",
            f"- **Command:** `{meta.get('command', 'pytest benchmarks/')}`, then "
            f"`python -m benchmarks.report {json_name}`",
            f"- **Load average** (1/5/15 min) at start {meta.get('load_at_start', '?')}, at end "
            f"{meta.get('load_at_end', '?')}; wall time of the run {meta.get('wall_s', '?')} s",
            f"- **Budgets:** memory {meta.get('memory_budget_gib', '?')} GiB per call, {meta.get('max_call_s', '?')} s "
            f"per call (estimated; larger cases skipped, listed below), ~{meta.get('target_s', '?')} s of timed "
            f"rounds per case"]
    out += [f"- **Note:** {n}" for n in notes] + [""]
    methods = sorted({r.get("memory_method", "?") for r in rows})
    out += ["Times are medians over the rounds; \"vs reference\" / \"vs compile\" = their median / this median "
            "(> 1: this label is faster). Memory = the peak a call adds, inputs excluded, outputs and gradients "
            f"included, measured as {', '.join(MEMORY_TEXT.get(m, m) for m in methods)}. ψω/φ GFLOP/s counts the "
            "MLP matmuls over Σn² ordered pairs (×3 for forward+backward), the same count for every label: the work "
            "of the plain formulation. The fused CPU kernels evaluate ψω/φ once per unordered pair, about half of "
            "that, so their actual FLOP rate is about half the figure shown.", ""]
    out += ["## Summary: the fastest gtkernels backend against each alternative", ""]
    out += summary_table(groups) + [""]
    slow = not_fastest(groups)
    out += ["## Where gtkernels is not the fastest", ""]
    out += slow if slow else ["- nowhere in this run"]
    out += [""]
    if plots:
        out += ["## Plots", ""]
        out += [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots] + [""]
    out += ["## Per group", ""]
    for name, rs in sorted(groups.items(), key=lambda kv: _group_key(kv[1])):
        out += [f"### {name}", "", describe(rs[0]), ""] + group_table(rs) + [""]
        notes = sorted({r["note"] for r in rs if r.get("note")})
        out += [f"*{n}*" for n in notes] + ([""] if notes else [])
    skipped = {t: r for t, r in (meta.get("skipped") or {}).items() if not r.startswith("smoke:")}
    if skipped:
        out += ["## Skipped in this run", "", "(The smoke cases' own selection is left out.)", ""]
        by_reason = collections.defaultdict(list)
        for test, reason in skipped.items():
            by_reason[reason].append(test)
        for reason, tests in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
            out.append(f"- {reason}: {len(tests)} case{'s' if len(tests) > 1 else ''} "
                       f"({', '.join(t.split('::')[-1] for t in sorted(tests)[:4])}{', …' if len(tests) > 4 else ''})")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0])
    p.add_argument("json", help="pytest-benchmark JSON (pytest benchmarks/ --benchmark-json=FILE)")
    p.add_argument("--out", help="folder for the .md and .png files (default: the JSON's folder)")
    p.add_argument("--title", help="title of the Markdown page")
    p.add_argument("--note", action="append", default=[], help="a line to add under the header (repeatable)")
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)
    data, rows = load(args.json)
    if not rows:
        print(f"{args.json}: no benchmarks (was it run with --benchmark-disable?)", file=sys.stderr)
        return 1
    out_dir = args.out or os.path.dirname(os.path.abspath(args.json))
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.splitext(os.path.basename(args.json))[0]
    plots = [] if args.no_plots else make_plots(rows, os.path.join(out_dir, stem))
    meta = data.get("machine_info", {}).get("gtkernels", {})
    title = args.title or f"gtkernels benchmarks: {meta.get('device', '?')}"
    text = render(data, rows, title, plots, os.path.basename(args.json), args.note)
    md = os.path.join(out_dir, stem + ".md")
    with open(md, "w") as fh:
        fh.write(text + "\n")
    print(text)
    print(f"\nwrote {md} and {len(plots)} plot(s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

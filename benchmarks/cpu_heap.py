"""Page faults and kernel time of the training step against the batch, with and without
``gtkernels.keep_freed_memory()`` (not a test; the reason is in ``gtkernels/cpu_heap.py``).

    python -m benchmarks.cpu_heap --preset paper --batches 128 1024 --threads 1 --steps 2 \\
        --out benchmarks/results/cpu-heap-paper-2026-12-03

Every (batch, allocator) runs in its own process on the peers' molecules (:func:`benchmarks.peers.data.
throughput_draw`: 1,024 fixed QM9 molecules, the first ``batch`` of them), the fused model of ``--preset``, one
training step as the peer table times it (forward, L1 loss of U0, backward, Adam): one warm-up step, then
``--steps`` measured. Per measured step: CPU seconds (user and system, ``getrusage``), wall seconds, minor page
faults; and the process's peak RSS. Allocators: "glibc default" (torch's allocator on glibc as the process
starts), "glibc: no mmap, no trim" (:func:`gtkernels.cpu_heap.keep_glibc_heap`, the fallback without the
extension) and "gtkernels block cache" (:func:`gtkernels.keep_freed_memory`). CPU seconds per
molecule, not wall, compare batches on a shared machine (the load is recorded); faults and system time do not
depend on the load at all.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from benchmarks.curves import load_text, provenance, publish

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALLOCATORS = ("glibc default", "glibc: no mmap, no trim", "gtkernels block cache")


def measure(preset: str, batch: int, allocator: int, steps: int, threads: int) -> dict:
    """One process's figures (this process: call it in a fresh interpreter)."""
    import torch
    import torch.nn.functional as F

    import gtkernels
    from benchmarks.peers import data
    from benchmarks.peers.models import cases
    torch.set_num_threads(threads)
    from gtkernels import cpu_heap
    if allocator == 1:
        state = cpu_heap.keep_glibc_heap()
    elif allocator == 2:
        state = gtkernels.keep_freed_memory()
    else:
        state = "left alone"
    case = cases()[f"ours-{preset}-fused"]
    draw = data.throughput_draw()
    if batch > len(draw):
        raise SystemExit(f"--batches: {batch} is more than the {len(draw)} molecules of the draw")
    mean, std = data.per_atom_stats(draw)
    torch.manual_seed(0)
    model = case.build(mean, std)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    z, pos, cu, y = data.packed(draw[:batch])
    inp, y = case.inputs(z, pos, cu), torch.from_numpy(y)

    def step():
        pred = case.energy(model, inp)
        loss = F.l1_loss(pred, y.to(pred.dtype))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps):
        step()
    r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    user, sys_s = (r1.ru_utime - r0.ru_utime) / steps, (r1.ru_stime - r0.ru_stime) / steps
    stats = cpu_heap.block_cache_stats()
    return {"preset": preset, "batch": batch, "allocator": ALLOCATORS[allocator], "state": state, "threads": threads,
            "cache_hits": stats["hits"], "cache_misses": stats["misses"],
            "steps": steps, "user_s": round(user, 3), "sys_s": round(sys_s, 3), "wall_s": round((t1 - t0) / steps, 3),
            "cpu_ms_per_molecule": round((user + sys_s) / batch * 1e3, 3),
            "minor_faults": round((r1.ru_minflt - r0.ru_minflt) / steps), "peak_rss_mib": round(r1.ru_maxrss / 1024),
            "load": os.getloadavg()[0]}


def report(summary: dict, out: str) -> None:
    lines = ["# Page faults of the CPU training step against the batch, with and without keeping freed memory", "",
             f"- command: `{summary['command']}`", f"- date: {summary['date']}; machine: {summary['machine']}; "
             f"torch {summary['torch']}",
             f"- load average before: {load_text(summary['load_before'])}, after: "
             f"{load_text(summary['load_after'])} (one case at a time; the machine is shared: compare CPU "
             f"seconds and faults, not wall)", "",
             "| preset | batch | C allocator | CPU ms / molecule | user s / step | system s / step "
             "| minor faults / step | wall s / step | peak RSS MiB |", "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in summary["runs"]:
        lines.append(f"| {r['preset']} | {r['batch']} | {r['allocator']} | {r['cpu_ms_per_molecule']:.1f} | "
                     f"{r['user_s']:.2f} | {r['sys_s']:.2f} | "
                     f"{r['minor_faults']:,} | {r['wall_s']:.2f} | {r['peak_rss_mib']:,} |")
    with open(out + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="paper")
    p.add_argument("--batches", type=int, nargs="+", default=[128, 1024])
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)
    p.add_argument("--one", nargs=2, type=int, metavar=("BATCH", "ALLOCATOR"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.preset, *args.one, args.steps, args.threads)))
        return 0
    import torch
    summary = {"command": "python -m benchmarks.cpu_heap " + " ".join(argv), "torch": torch.__version__,
               **provenance(), "runs": []}
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    for batch in args.batches:
        for allocator in range(len(ALLOCATORS)):
            cmd = [sys.executable, "-m", "benchmarks.cpu_heap", "--preset", args.preset, "--steps", str(args.steps),
                   "--threads", str(args.threads), "--out", args.out, "--one", str(batch), str(allocator)]
            res = subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
            summary["runs"].append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(summary["runs"][-1], flush=True)
    return publish(summary, args.out, report)


if __name__ == "__main__":
    sys.exit(main())

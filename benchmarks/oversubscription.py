"""CPU training throughput with 2 OpenMP threads while other processes compete for the cores (not a test).

    python -m benchmarks.oversubscription [--load 2] [--seconds 20] [--out benchmarks/results/oversubscription-cpu.md]

Each configuration runs in a fresh interpreter (an OpenMP wait policy is read once, when the runtime loads with
torch): the ``small`` preset (``make demo``'s CPU model) trains on batches of 32 molecules of the committed
QM9 sample (tests/data/qm9_sample.npz) for ``--seconds``, after a warm-up; the figure is molecules per second of
forward + backward + Adam step. ``--load`` busy processes (pure Python loops, one core each) run beside it in
the "loaded" rows. Configurations:

- ``package default``: what ``import gtkernels`` sets up (a short spin, then sleep: ``GOMP_SPINCOUNT=100``, see
  gtkernels/_openmp.py);
- ``spin (libgomp default)``: ``GTKERNELS_OMP_WAIT=keep``, libgomp's own default (spin ~300,000 iterations
  at each barrier and after each parallel region before sleeping);
- ``OMP_WAIT_POLICY=PASSIVE``: sleep at once;
- ``1 thread``.

Writes a Markdown file with the command, date, machine, load averages and a table; prints it too.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = r"""
import json, sys, time
import gtkernels                      # first: it sets the OpenMP wait policy before torch loads
import torch
from gtkernels.data import pad, qm9_sample
from gtkernels.models import GeometricTransformer
threads, seconds = int(sys.argv[1]), float(sys.argv[2])
torch.set_num_threads(threads)
torch.manual_seed(0)
sample = qm9_sample()
mols = [sample.molecule(i) for i in range(len(sample))]
model = GeometricTransformer("small", target="U0")
opt = torch.optim.Adam(model.parameters(), lr=1e-4)
batches = []
for s in range(0, len(mols) - 32 + 1, 32):
    z, pos, mask = pad(mols[s:s + 32], torch.float32)
    batches.append((z.long(), pos, mask))
def step(b):
    z, pos, mask = b
    opt.zero_grad()
    loss = model(z, pos, mask).square().mean()
    loss.backward()
    opt.step()
for b in batches[:3]:
    step(b)                                # warm-up
done, t0, i = 0, time.perf_counter(), 0
while time.perf_counter() - t0 < seconds:
    step(batches[i % len(batches)]); done += 32; i += 1
dt = time.perf_counter() - t0
import os
print(json.dumps({"mol_s": done / dt, "steps": i, "seconds": dt, "threads": torch.get_num_threads(),
                  "GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT"),
                  "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")}))
"""

CONFIGS = [
    ("package default", 2, {}),
    ("spin (libgomp default)", 2, {"GTKERNELS_OMP_WAIT": "keep"}),
    ("OMP_WAIT_POLICY=PASSIVE", 2, {"OMP_WAIT_POLICY": "PASSIVE"}),
    ("1 thread", 1, {}),
]


def _loadavg() -> str:
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])


def _busy(n: int):
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def _run(threads: int, env_extra: dict, seconds: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
                                                               "GTKERNELS_OMP_WAIT", "OMP_NUM_THREADS")}
    env.update(env_extra, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", WORKER, str(threads), str(seconds)], capture_output=True,
                         text=True, env=env, cwd=ROOT, timeout=600 + 10 * seconds)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--load", type=int, default=2, help="busy processes beside the loaded runs")
    p.add_argument("--seconds", type=float, default=20.0, help="measured seconds per run")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "oversubscription-cpu.md"))
    args = p.parse_args(argv)
    import torch
    rows = []
    start_load = _loadavg()
    for loaded in (False, True):
        for name, threads, env in CONFIGS:
            procs = _busy(args.load) if loaded else []
            try:
                time.sleep(1.0 if loaded else 0.0)
                before = _loadavg()
                res = _run(threads, env, args.seconds)
                after = _loadavg()
            finally:
                for pr in procs:
                    pr.kill()
                    pr.wait()
            rows.append((name, threads, f"{args.load} busy" if loaded else "none added", res, before, after))
            print(f"{name:<26} threads {threads} load {rows[-1][2]:<7} {res['mol_s']:8.1f} mol/s  "
                  f"loadavg {before} -> {after}", flush=True)
    cmd = shlex.join(["python", "-m", "benchmarks.oversubscription"] + (argv if argv is not None else sys.argv[1:]))
    lines = [
        "# CPU training throughput under competing load (2 OpenMP threads)", "",
        f"- command: `{cmd}`",
        f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}",
        f"- machine: {platform.node()}, {os.cpu_count()} logical CPUs, {platform.processor() or platform.machine()}; "
        f"torch {torch.__version__}",
        f"- load average at start: {start_load} (the machine is shared: other work runs beside these figures)",
        f"- workload: `small` preset, batches of 32 QM9 sample molecules, forward + backward + Adam step, "
        f"{args.seconds:g} s measured per row after 3 warm-up steps; each row a fresh interpreter",
        f"- loaded rows: {args.load} busy Python processes (one core each) beside the run. \"none added\" rows "
        "still share the machine with whatever else the load averages show", "",
        "| configuration | threads | competing load added | mol/s | steps | loadavg before → after |",
        "| --- | ---: | --- | ---: | ---: | --- |",
    ]
    for name, threads, load, res, before, after in rows:
        lines.append(f"| {name} | {threads} | {load} | {res['mol_s']:.1f} | {res['steps']} | {before} → {after} |")
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        fh.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

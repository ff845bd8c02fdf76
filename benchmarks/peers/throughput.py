"""One throughput case of the peer table, in its own process (peak RSS is the whole process's high-water mark).

    python -m benchmarks.peers.throughput CASE {train,infer,forces} BATCH [--threads N] [--seconds S]

Molecules: :func:`benchmarks.peers.data.throughput_draw` (1,024 fixed QM9 molecules), cut into consecutive
batches of ``BATCH`` (cycled). ``train``: forward, L1 loss of U0 (meV), backward, Adam step; ``infer``: forward
under ``torch.no_grad``; ``forces``: forward and −∂E/∂pos. Inputs (and each case's out-of-step neighbour lists,
see :mod:`benchmarks.peers.models`) are built before timing. Two warm-up steps, then steps until ``--seconds``
have passed (at least 3). Prints one JSON line: molecules/s, steps, params, peak RSS (MiB), threads, load.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def peak_rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run(name: str, mode: str, batch: int, seconds: float, threads: int) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    from benchmarks.peers import data
    from benchmarks.peers.models import cases, parameters, positions, version
    case = cases()[name]
    why = case.missing()
    if why:
        return {"case": name, "skipped": why}
    draw = data.throughput_draw()
    mean, std = data.per_atom_stats(draw)
    torch.manual_seed(0)
    model = case.build(mean, std)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    chunks = [draw[i:i + batch] for i in range(0, len(draw) - batch + 1, batch)]
    prepared = []
    for idx in chunks:
        z, pos, cu, y = data.packed(idx)
        prepared.append((case.inputs(z, pos, cu), torch.from_numpy(y)))
    model.train(mode == "train")

    def step(k):
        inp, y = prepared[k % len(prepared)]
        if mode == "infer":
            with torch.no_grad():
                return case.energy(model, inp)
        if mode == "forces":
            pos = positions(inp).detach().requires_grad_(True)
            key = "_positions" if "_positions" in inp else "pos"
            e = case.energy(model, {**inp, key: pos})
            (f,) = torch.autograd.grad(e.sum(), pos)
            return -f
        pred = case.energy(model, inp)
        loss = F.l1_loss(pred, y.to(pred.dtype))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return pred

    load = os.getloadavg()
    for k in range(2):
        out = step(k)
    assert torch.isfinite(out).all(), f"{name}: non-finite output"
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < seconds:
        step(n)
        n += 1
    dt = time.perf_counter() - t0
    return {"case": name, "label": case.title, "package": case.package, "version": version(case.package),
            "mode": mode, "batch": batch, "threads": threads, "steps": n, "seconds": round(dt, 3),
            "mol_per_s": round(n * batch / dt, 2), "params": parameters(model), "peak_rss_mib": round(peak_rss_mib()),
            "neighbours": case.neighbours, "load_before": load, "load_after": os.getloadavg(),
            "torch": torch.__version__, "np": np.__version__}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("case")
    p.add_argument("mode", choices=["train", "infer", "forces"])
    p.add_argument("batch", type=int)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args(argv)
    print(json.dumps(run(args.case, args.mode, args.batch, args.seconds, args.threads)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Time to accuracy: validation U0 MAE against CPU time, ours against SchNetPack's PaiNN and SchNet (not a test).

    python -m benchmarks.peers.time_to_accuracy --budget 1800 --threads 1 --parallel 2 \\
        --out benchmarks/results/peers-time-to-accuracy-2026-12-03

Every case trains in its own process on the same molecules (:func:`benchmarks.peers.data.training_sets`: a
fixed 20,000 of QM9's standard training split, the first 2,000 of its validation split) with its package's
published QM9 recipe (:mod:`benchmarks.peers.models`: batch, lr, optimiser, loss; ours: ``gtkernels train``'s
small preset, batch 32, lr 5e-4 as ``make demo``, L1, pair-merging augmentation), until its process has used
``--budget`` seconds of CPU time (user + system, all threads: ``time.process_time``), validating every
``--eval-every`` CPU seconds. Validation counts against the budget for every case alike; building the batches
and the neighbour lists does too. The plateau schedulers of the recipes (patience 50-75 epochs) never fire
within such a budget and are left out. CPU time, not wall time, is the budget, so a case that shares the machine
with another keeps its budget (the machine's load is recorded; contention for caches and memory bandwidth still
slows every case somewhat).

Writes ``OUT.json`` (every validation point of every case), ``OUT.md`` and ``OUT.png`` (MAE against CPU
minutes, one line per case). ``--replot OUT.json`` redraws from the JSON.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import time

import numpy as np

from benchmarks.curves import MAE_LABEL, finish, load_text, mae_axes, provenance, pyplot, write_markdown

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CASES = ("ours-small-fused", "PaiNN", "SchNet")


def train_case(name: str, budget: float, eval_every: float, n_train: int, n_val: int, seed: int) -> dict:
    """Train case ``name`` until ``budget`` CPU seconds; its validation curve (rows of cpu_s, wall_s, epoch,
    step, molecules, val_mae_mev)."""
    import torch
    import torch.nn.functional as F

    from benchmarks.peers import data
    from benchmarks.peers.models import EV, cases, parameters, version
    case = cases()[name]
    train, val = data.training_sets(n_train, n_val)
    mean, std = data.per_atom_stats(train)
    torch.manual_seed(seed)
    model = case.build(mean, std)
    opt_cls = torch.optim.AdamW if case.optimizer == "adamw" else torch.optim.Adam
    try:
        opt = opt_cls(model.parameters(), lr=case.lr, fused=True)
    except (RuntimeError, ValueError, TypeError):
        opt = opt_cls(model.parameters(), lr=case.lr)
    augment = name.startswith("ours")
    val_batches = [data.packed(val[i:i + 256]) for i in range(0, len(val), 256)]

    def validate() -> float:
        model.eval()
        err = []
        with torch.no_grad():
            for z, pos, cu, y in val_batches:
                pred = case.energy(model, case.inputs(z, pos, cu)).double().numpy()
                err.append(np.abs(pred - y))
        model.train()
        return float(np.concatenate(err).mean())

    rows = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    step = molecules = epoch = 0
    next_eval = eval_every

    def record():
        rows.append({"cpu_s": round(time.process_time() - cpu0, 2), "wall_s": round(time.perf_counter() - wall0, 2),
                     "epoch": round(epoch + batch_no / len(order), 3), "step": step, "molecules": molecules,
                     "val_mae_mev": validate()})
        print(f"{name}: {rows[-1]}", flush=True)

    done = False
    while not done:
        rng = np.random.default_rng([seed, epoch])
        perm = train[rng.permutation(len(train))]
        order = [perm[i:i + case.batch] for i in range(0, len(perm) - case.batch + 1, case.batch)]
        for batch_no, idx in enumerate(order):
            z, pos, cu, y = data.packed(idx, augment)
            inp = case.inputs(z, pos, cu)
            pred = case.energy(model, inp)
            target = torch.from_numpy(y).to(pred.dtype)
            loss = F.l1_loss(pred, target) if case.loss == "l1" else F.mse_loss(pred / EV, target / EV)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            molecules += len(idx)
            used = time.process_time() - cpu0
            if used >= budget:
                batch_no += 1
                done = True
                break
            if used >= next_eval:
                record()
                next_eval = (time.process_time() - cpu0) + eval_every
        else:
            batch_no = 0
            epoch += 1
            continue
    record()
    return {"case": name, "label": case.title, "package": case.package, "version": version(case.package),
            "params": parameters(model), "batch": case.batch, "lr": case.lr, "loss": case.loss,
            "optimizer": case.optimizer, "neighbours": case.neighbours, "curve": rows,
            "threads": torch.get_num_threads(), "budget_cpu_s": budget, "n_train": n_train, "n_val": n_val}


def run_all(args) -> dict:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    summary, t0 = provenance(), time.time()

    def one(name):
        path = f"{args.out}.{name}.json"
        if not os.path.exists(path):
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
            subprocess.run([sys.executable, "-m", "benchmarks.peers.time_to_accuracy", "--one", name, "--budget",
                            str(args.budget), "--eval-every", str(args.eval_every), "--train", str(args.train),
                            "--val", str(args.val), "--threads", str(args.threads), "--json", path],
                           check=True, env=env, cwd=ROOT)
        with open(path) as fh:
            return json.load(fh)

    with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
        results = list(pool.map(one, args.cases))
    import torch
    summary.update(command="python -m benchmarks.peers.time_to_accuracy " + " ".join(args.argv),
                   torch=torch.__version__, wall_s=round(time.time() - t0), parallel=args.parallel, results=results)
    return finish(summary)


def _final(r: dict) -> float:
    return r["curve"][-1]["val_mae_mev"]


def write_report(summary: dict, out: str) -> None:
    results = summary["results"]
    lines = ["# Time to accuracy on CPU: validation U0 MAE after the same CPU time", "",
             f"- command: `{summary['command']}`", f"- date: {summary['date']}; machine: {summary['machine']}; "
             f"torch {summary['torch']}",
             f"- load average before: {load_text(summary['load_before'])}, after: "
             f"{load_text(summary['load_after'])}; {summary['parallel']} case(s) at a time, "
             f"{results[0]['threads']} thread(s) each; {summary['wall_s']} s wall in all",
             f"- data: a fixed {results[0]['n_train']:,} of QM9's standard training split, the first "
             f"{results[0]['n_val']:,} of its validation split; target U0 − Σ atomref (meV)",
             f"- budget: {results[0]['budget_cpu_s']:.0f} CPU seconds per case (process time, validation "
             f"included)",
             "- every case builds its batches (and SchNetPack's neighbour lists, 5 Å, in plain torch) inside the "
             "loop: they count against its budget", "",
             "| case | params | batch | lr | loss | steps | epochs | val U0 MAE (meV) |",
             "|---|---:|---:|---:|---|---:|---:|---:|"]
    for r in results:
        last = r["curve"][-1]
        lines.append(f"| {r['label']} | {r['params'] / 1e6:.2f} M | {r['batch']} | {r['lr']:g} | {r['loss']} "
                     f"({r['optimizer']}) | {last['step']:,} | {last['epoch']:.2f} | "
                     f"{last['val_mae_mev']:.1f} |")
    fig, ax = pyplot().subplots(figsize=(7, 4.5))
    for r in results:
        cpu = [p["cpu_s"] / 60 for p in r["curve"]]
        ax.plot(cpu, [p["val_mae_mev"] for p in r["curve"]], marker="o", ms=3,
                label=f"{r['label']}: {_final(r):.0f} meV")
    ax.set_xlabel("CPU minutes of the training process (validation included)")
    ax.set_ylabel(MAE_LABEL)
    ax.set_title(f"QM9 U0, {results[0]['n_train']:,} training molecules, {results[0]['threads']} thread(s)")
    mae_axes(ax)
    ax.legend()
    write_markdown(out, lines, fig, "validation MAE against CPU time")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES))
    p.add_argument("--budget", type=float, default=1800.0, help="CPU seconds per case")
    p.add_argument("--eval-every", type=float, default=120.0, help="CPU seconds between validations")
    p.add_argument("--train", type=int, default=20_000)
    p.add_argument("--val", type=int, default=2_000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--parallel", type=int, default=1, help="cases at a time (each in its own process)")
    p.add_argument("--out", default=None, help="output prefix (OUT.json, OUT.md, OUT.png; OUT.CASE.json per case)")
    p.add_argument("--replot", default=None, metavar="OUT.json")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = argv
    if args.replot:
        with open(args.replot) as fh:
            write_report(json.load(fh), args.replot[:-len(".json")])
        return 0
    if args.one:
        import torch
        torch.set_num_threads(args.threads)
        result = train_case(args.one, args.budget, args.eval_every, args.train, args.val, seed=0)
        with open(args.json + ".tmp", "w") as fh:
            json.dump(result, fh)
        os.replace(args.json + ".tmp", args.json)
        return 0
    if not args.out:
        p.error("--out PREFIX is required")
    summary = run_all(args)
    with open(args.out + ".json", "w") as fh:
        json.dump(summary, fh, indent=1)
    write_report(summary, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

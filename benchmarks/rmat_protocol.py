"""R-MAT's benchmark protocol on FreeSolv (or the solubility set), from scratch, through the CLI.

    python -m benchmarks.rmat_protocol --dataset freesolv --preset small --epochs 100 --lrs 1e-2 5e-3 1e-3 \\
        --parallel 2 --out benchmarks/results/rmat-freesolv-small-2026-12-02

For every learning rate of the grid and every split seed of the released benchmark (1234, 100, 44, 13, 7407,
5357): ``gtkernels train --model rmat`` (random 80/10/10 split, MSE loss, Noam schedule, batch 16), then
``gtkernels evaluate`` on the best-validation checkpoint. The learning rate is the one with the lowest mean
validation RMSE over the seeds (huggingmolecules' ``compute_result``); its test RMSE is reported as
mean ± std (numpy's population std, as released). Runs already finished in the run folders are reused, so an
interrupted protocol continues. Writes ``OUT.json`` (every run) and ``OUT.md`` (the table with the published
anchors), and records the machine's load before and after.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

from benchmarks.common import cpu_model
from gtkernels.data.rmat_data import DATASETS
from gtkernels.rmat_task import SPLIT_SEEDS

RMAT_UNITS = {name: ds.unit for name, ds in DATASETS.items()}

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: huggingmolecules' README, test RMSE (all pretrained but chemprop), per data set (none for the others)
ANCHORS = {"freesolv": [("MAT 200k (pretrained)", "0.913 ± 0.196"), ("MAT 20M (pretrained)", "0.854 ± 0.197"),
           ("GROVER base (pretrained)", "0.917"), ("chemprop D-MPNN", "1.061 ± 0.168")]}


def one_run(args, lr: float, seed: int) -> dict:
    run_dir = os.path.join(args.runs, f"{args.dataset}-{args.preset}-lr{lr:g}-seed{seed}")
    metrics = os.path.join(run_dir, "test_metrics.json")
    if not os.path.exists(metrics):
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        cmd = [sys.executable, "-m", "gtkernels", "train", "--model", "rmat", "--dataset", args.dataset,
               "--preset", args.preset, "--epochs", str(args.epochs), "--lr", f"{lr:g}", "--seed", str(seed),
               "--split-seed", str(seed), "--threads", str(args.threads), "--run-dir", run_dir, "--no-progress"]
        if os.path.exists(os.path.join(run_dir, "last.pt")):
            cmd = [sys.executable, "-m", "gtkernels", "train", "--run-dir", run_dir, "--resume", "--epochs",
                   str(args.epochs), "--threads", str(args.threads), "--no-progress"]
        t0 = time.time()
        subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
        wall = time.time() - t0
        subprocess.run([sys.executable, "-m", "gtkernels", "evaluate", run_dir, "--threads", str(args.threads),
                        "--no-progress"], check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
        with open(os.path.join(run_dir, "wall.json"), "w") as fh:
            json.dump({"train_wall_s": wall}, fh)
    with open(metrics) as fh:
        test = json.load(fh)
    with open(os.path.join(run_dir, "metrics.csv")) as fh:
        rows = [line.strip().split(",") for line in fh][1:]
    best_val = min(float(r[5]) for r in rows)
    wall = json.load(open(os.path.join(run_dir, "wall.json")))["train_wall_s"] if os.path.exists(
        os.path.join(run_dir, "wall.json")) else float("nan")
    return {"lr": lr, "seed": seed, "val_rmse": best_val, "test_rmse": test["rmse"], "test_mae": test["mae"],
            "n_test": test["n"], "train_wall_s": wall, "run_dir": os.path.relpath(run_dir, ROOT)}


def plot(args, runs, best_summary, lr) -> None:
    """``OUT.png``: validation RMSE against epochs for every seed at the chosen lr, and the test RMSE
    (mean ± std over the seeds) beside the published anchors."""
    import csv
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for r in runs:
        with open(os.path.join(ROOT, r["run_dir"], "metrics.csv"), newline="") as fh:
            rows = list(csv.DictReader(fh))
        left.plot([float(x["epoch"]) for x in rows], [float(x["val_rmse"]) for x in rows], lw=1,
                  label=f"split seed {r['seed']}")
    left.set_yscale("log"), left.set_xlabel("epoch"), left.set_ylabel(f"validation RMSE ({RMAT_UNITS[args.dataset]})")
    left.set_title(f"R-MAT {args.preset} on {args.dataset}, lr {lr:g}, from scratch"), left.legend(fontsize=7)
    anchors = ANCHORS.get(args.dataset, [])
    names = [f"R-MAT {args.preset}\n(ours, no pretraining)"] + [n.replace(" (", "\n(") for n, _ in anchors]
    means = [best_summary["test_rmse"][0]] + [float(v.split(" ± ")[0]) for _, v in anchors]
    stds = [best_summary["test_rmse"][1]] + [float(v.split(" ± ")[1]) if "±" in v else 0.0 for _, v in anchors]
    right.bar(range(len(names)), means, yerr=stds, capsize=4, color=["C3"] + ["C0"] * len(anchors))
    unit = RMAT_UNITS[args.dataset]
    right.set_xticks(range(len(names)), names, fontsize=7, rotation=15), right.set_ylabel(f"test RMSE ({unit})")
    right.set_title(f"{args.dataset} test RMSE, mean ± std over {len(runs)} splits")
    fig.tight_layout()
    fig.savefig(args.out + ".png", dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--replot", action="store_true", help="only redraw OUT.png from OUT.json")
    p.add_argument("--dataset", default="freesolv")
    p.add_argument("--preset", default="small")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-2, 5e-3, 1e-3])
    p.add_argument("--seeds", type=int, nargs="+", default=list(SPLIT_SEEDS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--parallel", type=int, default=2, help="runs at once")
    p.add_argument("--runs", default=os.path.join(ROOT, "build", "rmat-protocol"))
    p.add_argument("--out", required=True, help="path prefix of the .json / .md results")
    args = p.parse_args(argv)
    if args.replot:
        saved = json.load(open(args.out + ".json"))
        lr = saved["chosen_lr"]
        plot(args, [r for r in saved["runs"] if r["lr"] == lr], saved["summary"][f"{lr:g}"], lr)
        return 0
    load_before = os.getloadavg()
    t0 = time.time()
    jobs = [(lr, seed) for lr in args.lrs for seed in args.seeds]
    with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
        runs = list(pool.map(lambda job: one_run(args, *job), jobs))
    total = time.time() - t0
    by_lr = {lr: [r for r in runs if r["lr"] == lr] for lr in args.lrs}
    summary = {lr: {k: (float(np.mean([r[k] for r in rs])), float(np.std([r[k] for r in rs])))
                    for k in ("val_rmse", "test_rmse", "test_mae")} for lr, rs in by_lr.items()}
    best = min(args.lrs, key=lambda lr: summary[lr]["val_rmse"][0])
    import torch
    import gtkernels
    result = {
        "command": "python -m benchmarks.rmat_protocol " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.date.today().isoformat(), "machine": cpu_model(),
        "cpus": os.cpu_count(), "load_before": load_before, "load_after": os.getloadavg(),
        "versions": {"gtkernels": gtkernels.__version__, "torch": torch.__version__,
                     "python": platform.python_version()},
        "protocol": "random 80/10/10 split per seed, MSE loss, Adam + Noam schedule (warm-up 0.2, model size 768), "
                    "batch 16; test RMSE of the best-validation checkpoint; lr chosen on the mean validation RMSE",
        "dataset": args.dataset, "preset": args.preset, "epochs": args.epochs, "threads_per_run": args.threads,
        "parallel_runs": args.parallel, "wall_s": total, "runs": runs,
        "summary": {f"{lr:g}": v for lr, v in summary.items()}, "chosen_lr": best,
        "test_rmse": summary[best]["test_rmse"]}
    with open(args.out + ".json", "w") as fh:
        json.dump(result, fh, indent=1)
    lines = [f"# R-MAT from scratch on {args.dataset}: test RMSE over {len(args.seeds)} random splits", "",
             f"`{result['command']}` — {result['date']}, {result['machine']} ({result['cpus']} CPUs), "
             f"torch {torch.__version__}, {args.threads} thread(s) per run, {args.parallel} runs at once, "
             f"load {load_before[0]:.1f} before / {result['load_after'][0]:.1f} after, {total / 60:.0f} min in all.",
             "", f"Preset `{args.preset}`, {args.epochs} epochs, seeds {', '.join(map(str, args.seeds))}.", "",
             "| learning rate | val RMSE | test RMSE | test MAE |", "|---|---:|---:|---:|"]
    for lr in args.lrs:
        s = summary[lr]
        lines.append(f"| {lr:g}{' (chosen)' if lr == best else ''} | {s['val_rmse'][0]:.3f} ± {s['val_rmse'][1]:.3f} "
                     f"| {s['test_rmse'][0]:.3f} ± {s['test_rmse'][1]:.3f} | {s['test_mae'][0]:.3f} ± "
                     f"{s['test_mae'][1]:.3f} |")
    lines += ["", f"| model | {args.dataset} test RMSE ({RMAT_UNITS[args.dataset]}) |", "|---|---:|",
              f"| R-MAT {args.preset}, gtkernels, **no pretraining** | {summary[best]['test_rmse'][0]:.3f} ± "
              f"{summary[best]['test_rmse'][1]:.3f} |"]
    lines += [f"| {name} (huggingmolecules README) | {value} |" for name, value in ANCHORS.get(args.dataset, [])]
    if args.dataset not in ANCHORS:
        lines += ["", "(huggingmolecules' README publishes no result for this set.)"]
    lines += ["", f"![validation RMSE per epoch and test RMSE against the anchors]({os.path.basename(args.out)}.png)"]
    with open(args.out + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    plot(args, by_lr[best], summary[best], best)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train the Geometric Transformer on one QM9 target: ``python -m gtkernels train --target U0 ...``.

A run folder holds ``config.json``, ``split.json`` (the test set is never trained on), ``metrics.csv``,
``last.pt`` (full training state, written atomically at the end of each epoch and of the time budget) and
``best.pt`` (weights of the best validation MAE). ``--resume`` continues exactly where ``last.pt`` stopped:
model, optimiser, scheduler, RNG states, epoch and position inside it, split.

Multi-process: launch with ``torchrun --nproc_per_node=K -m gtkernels train ...`` (DistributedDataParallel;
gloo on CPU, nccl on GPU). Each process takes every K-th batch of the same shuffled epoch.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ._backends import BACKENDS, PRECISIONS
from .data.augment import merge_pairs
from .data.batching import make_batches, packed_to_padded
from .data.qm9 import QM9, load_split, make_split, save_split
from .data.molecules import training_domain
from .data.units import BY_NAME, TARGET_NAMES, atomref, target as target_info
from .models import PRESETS, GeometricTransformer

CKPT_VERSION = 1


# ------------------------------------------------------------------------------------------- checkpoints
def save_atomic(obj, path: str) -> None:
    """``torch.save`` to ``path.tmp``, fsync, then ``os.replace``: a crash leaves the old file intact."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def build_model(config: dict, mean: float = 0.0, std: float = 1.0, backend: Optional[str] = None):
    m = config["model"]
    kwargs = {k: m[k] for k in ("num_layers", "d_model", "num_heads") if k in m}
    return GeometricTransformer(m.get("preset", "small"), backend=backend or config.get("backend", "auto"),
                                precision=config.get("precision", "ieee"), target=config["target"], mean=mean, std=std,
                                atomref=torch.as_tensor(atomref(config["target"])), **kwargs)


def load_run(run_dir: str, which: str = "best", backend: Optional[str] = None):
    """``(model in eval mode, config)`` from a run folder (``which`` = ``best`` or ``last``)."""
    with open(os.path.join(run_dir, "config.json")) as fh:
        config = json.load(fh)
    path = os.path.join(run_dir, f"{which}.pt")
    if not os.path.exists(path):
        path = os.path.join(run_dir, "last.pt")
    ckpt = load_checkpoint(path)
    model = build_model(config, backend=backend)
    model.load_state_dict(ckpt["model"])
    return model.eval(), config


# ------------------------------------------------------------------------------------------------- data
class Batcher:
    """Packed batches of QM9 molecules as tensors; targets as float64 residuals y − Σ atomref(z)."""

    def __init__(self, ds: QM9, target: str):
        self.ds = ds
        self.y = ds.targets(target)
        ref = atomref(target)
        self.ref_sum = np.add.reduceat(ref[ds.z], ds.offsets[:-1]) if len(ds.z) else np.zeros(0)
        self.ref_sum[ds.n_atoms == 0] = 0.0
        self.res = self.y - self.ref_sum

    def gather(self, idx: np.ndarray):
        """``(z [T] uint8, pos [T, 3] float64, cu [B+1] int64, residual [B] float64)`` as numpy arrays."""
        ds = self.ds
        counts = ds.n_atoms[idx]
        cu = np.zeros(len(idx) + 1, np.int64)
        cu[1:] = np.cumsum(counts)
        atom = np.repeat(ds.offsets[idx] - cu[:-1], counts) + np.arange(cu[-1])
        return ds.z[atom], ds.pos[atom].astype(np.float64), cu, self.res[idx]

    @staticmethod
    def to_tensors(z, pos, cu, y, device, layout: str = "packed"):
        cu_host = cu
        z = torch.from_numpy(z.astype(np.int64)).to(device)
        pos = torch.from_numpy(pos).to(device)
        cu = torch.from_numpy(cu.astype(np.int32)).to(device)
        y = torch.from_numpy(y).to(device)
        if layout == "padded":
            zp, pp, mask = packed_to_padded(z, pos, cu)
            return dict(z=zp, pos=pp, mask=mask), y
        # the largest molecule, known here on the host: the model needs no host sync to size its kernels
        max_seqlen = int(np.diff(cu_host).max()) if len(cu_host) > 1 else 0
        return dict(z=z, pos=pos, cu_seqlens=cu, max_seqlen=max_seqlen), y


def norm_stats(batcher: Batcher, train_idx: np.ndarray):
    """Per-atom mean and std of (target − Σ atomref) / n_atoms over the training set (the paper's μ, σ)."""
    per_atom = batcher.res[train_idx] / batcher.ds.n_atoms[train_idx]
    return float(per_atom.mean()), float(max(per_atom.std(), 1e-6))


@torch.no_grad()
def predict_indices(model, batcher: Batcher, idx: np.ndarray, device, batch_size: int = 512,
                    layout: str = "packed", amp: bool = False) -> np.ndarray:
    """Residual predictions (float64, without Σ atomref) for molecules ``idx``."""
    model.eval()
    out = []
    for i in range(0, len(idx), batch_size):
        inp, _ = Batcher.to_tensors(*batcher.gather(idx[i:i + batch_size]), device, layout)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            pred = model(**_model_inputs(inp), include_atomref=False)
        out.append(pred.double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def _model_inputs(inp: dict) -> dict:
    if "cu_seqlens" in inp:
        return dict(z=inp["z"], pos=inp["pos"], cu_seqlens=inp["cu_seqlens"], max_seqlen=inp.get("max_seqlen"))
    return dict(z=inp["z"], pos=inp["pos"], mask=inp["mask"])


# -------------------------------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="U0", choices=TARGET_NAMES, help="QM9 target (default U0)")
    p.add_argument("--preset", default=None, choices=list(PRESETS),
                   help="model size (default: paper on GPU, small on CPU)")
    p.add_argument("--num-layers", type=int), p.add_argument("--d-model", type=int)
    p.add_argument("--num-heads", type=int)
    p.add_argument("--batch-size", type=int, default=32, help="molecules per step, all processes (paper: 32)")
    p.add_argument("--epochs", type=int, default=None, help="number of epochs (total, counting resumed ones)")
    p.add_argument("--time-budget", type=float, default=None, help="wall-clock seconds of training in this call")
    p.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate at batch 32 (paper: 2e-4)")
    p.add_argument("--lr-scaling", default="none", choices=["none", "linear", "sqrt"],
                   help="scale --lr by (batch/32) or its square root for large batches")
    p.add_argument("--warmup-steps", type=int, default=0, help="linear lr warm-up steps")
    p.add_argument("--patience", type=int, default=50, help="ReduceLROnPlateau patience in epochs (paper: 50)")
    p.add_argument("--factor", type=float, default=0.8, help="ReduceLROnPlateau factor (paper: 0.8)")
    p.add_argument("--min-lr", type=float, default=1e-6)
    p.add_argument("--clip", type=float, default=0.0, help="gradient-norm clipping (0 = off)")
    p.add_argument("--augment", default="all", choices=["all", "extensive", "none"],
                   help="pair-merging augmentation (paper: all targets); 'extensive' = only extensive targets")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the initialisation and the shuffling")
    p.add_argument("--split-seed", type=int, default=None, help="seed of the split (default: --seed)")
    p.add_argument("--backend", default="auto", choices=list(BACKENDS))
    p.add_argument("--precision", default="ieee", choices=list(PRECISIONS),
                   help="float32 matmuls of the GPU backends: ieee (exact, default) or tf32 (tensor cores)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (GPU only)")
    p.add_argument("--layout", default="packed", choices=["packed", "padded"])
    p.add_argument("--bucket", action="store_true", help="size-bucketed batches (less padding)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N QM9 molecules (tests, demos)")
    p.add_argument("--max-val", type=int, default=None, help="validate on at most this many molecules")
    p.add_argument("--eval-every", type=int, default=0,
                   help="also validate and checkpoint every N steps inside an epoch (0: at epoch ends only)")
    p.add_argument("--cache", default=None, help="dataset cache folder (default $GTKERNELS_CACHE or ~/.cache/gtkernels)")
    p.add_argument("--run-dir", default=None, help="output folder (default runs/<target>-<preset>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from last.pt")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _setup_distributed():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, None
    import torch.distributed as dist
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    rank = dist.get_rank()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device("cuda", local) if backend == "nccl" else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return rank, world, dev


def _lr_now(opt) -> float:
    return float(opt.param_groups[0]["lr"])


def run(args: argparse.Namespace) -> Dict[str, float]:
    """Train as ``args`` say; returns a summary (best val MAE, molecules/s, run folder, ...)."""
    rank, world, ddp_device = _setup_distributed()
    if args.threads:
        torch.set_num_threads(args.threads)
    if ddp_device is not None:
        device = ddp_device
    elif args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    amp = bool(args.amp and device.type == "cuda")
    if args.amp and not amp and rank == 0:
        print("note: --amp is bf16 autocast on GPU only; training in float32 on CPU", file=sys.stderr)

    # ---- configuration (a resumed run keeps its own, except the stopping criteria)
    if args.resume:
        if not args.run_dir or not os.path.exists(os.path.join(args.run_dir, "config.json")):
            raise SystemExit("--resume needs --run-dir of an existing run (with config.json)")
        with open(os.path.join(args.run_dir, "config.json")) as fh:
            config = json.load(fh)
        run_dir = args.run_dir
    else:
        preset = args.preset or ("paper" if device.type == "cuda" else "small")
        model_cfg = {"preset": preset, **PRESETS[preset]}
        for k in ("num_layers", "d_model", "num_heads"):
            if getattr(args, k) is not None:
                model_cfg[k] = getattr(args, k)
        scale = {"none": 1.0, "linear": args.batch_size / 32, "sqrt": math.sqrt(args.batch_size / 32)}[args.lr_scaling]
        config = {
            "target": args.target, "unit": target_info(args.target).unit, "model": model_cfg,
            "batch_size": args.batch_size, "lr": args.lr * scale, "base_lr": args.lr, "lr_scaling": args.lr_scaling,
            "warmup_steps": args.warmup_steps, "patience": args.patience, "factor": args.factor,
            "min_lr": args.min_lr, "clip": args.clip, "seed": args.seed,
            "split_seed": args.seed if args.split_seed is None else args.split_seed,
            "augment": args.augment, "backend": args.backend, "precision": args.precision, "layout": args.layout,
            "bucket": args.bucket,
            "limit": args.limit, "max_val": args.max_val, "eval_every": args.eval_every, "amp": amp, "world_size": world,
        }
        run_dir = args.run_dir or os.path.join(
            "runs", f"{args.target}-{preset}-{time.strftime('%Y%m%d-%H%M%S')}")
        if rank == 0:
            os.makedirs(run_dir, exist_ok=True)
            if os.path.exists(os.path.join(run_dir, "last.pt")):
                raise SystemExit(f"{run_dir} already holds a run; use --resume or another --run-dir")
    target = config["target"]

    ds = QM9(cache=args.cache, limit=config["limit"], progress=rank == 0 and not args.no_progress)
    split_path = os.path.join(run_dir, "split.json")
    if os.path.exists(split_path):
        split = load_split(split_path)
    else:
        split = make_split(len(ds), seed=config["split_seed"])
        # elements, largest molecule, closest atom pair of the training set: predict / GTCalculator warn beyond them
        config["domain"] = training_domain(ds, split["train"])
        if rank == 0:
            save_split(split, split_path, seed=config["split_seed"], n_molecules=len(ds), limit=config["limit"])
            with open(os.path.join(run_dir, "config.json.tmp"), "w") as fh:
                json.dump(config, fh, indent=1)
            os.replace(os.path.join(run_dir, "config.json.tmp"), os.path.join(run_dir, "config.json"))
    if world > 1:
        torch.distributed.barrier()
    train_idx, val_idx = split["train"], split["val"]
    if config.get("max_val"):
        val_idx = val_idx[:config["max_val"]]

    batcher = Batcher(ds, target)
    mean, std = norm_stats(batcher, train_idx)
    torch.manual_seed(config["seed"])
    model = build_model(config, mean, std).to(device)
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.Adam(model.parameters(), lr=config["lr"])
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=config["factor"],
                                                       patience=config["patience"], min_lr=config["min_lr"])
    state = {"epoch": 0, "batch": 0, "step": 0, "best_val": float("inf"), "train_seconds": 0.0, "molecules": 0}
    last_path, best_path = os.path.join(run_dir, "last.pt"), os.path.join(run_dir, "best.pt")
    if args.resume and not os.path.exists(last_path) and rank == 0:
        print(f"note: {last_path} does not exist yet (killed before the first checkpoint); starting from step 0",
              file=sys.stderr)
    if args.resume and os.path.exists(last_path):
        ckpt = load_checkpoint(last_path)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["torch_rng"])
        if torch.cuda.is_available() and "cuda_rng" in ckpt:
            torch.cuda.set_rng_state_all(list(ckpt["cuda_rng"]))
        state.update(ckpt["state"])

    epochs = args.epochs
    if epochs is None and args.time_budget is None:
        raise SystemExit("give --epochs and/or --time-budget")
    augment = config["augment"] == "all" or (config["augment"] == "extensive" and BY_NAME[target].extensive)
    metrics_path = os.path.join(run_dir, "metrics.csv")
    fields = ["epoch", "step", "train_seconds", "lr", "train_mae", "val_mae", "molecules_per_s"]
    if rank == 0:
        _trim_metrics(metrics_path, fields, state["step"])

    from tqdm import tqdm
    t_start = time.perf_counter()
    out_of_time = False
    summary: Dict[str, float] = {}
    while not out_of_time and (epochs is None or state["epoch"] < epochs):
        rng = np.random.default_rng([config["seed"], state["epoch"]])
        batches = make_batches(ds.n_atoms[train_idx], config["batch_size"], rng, bucket=config["bucket"])
        batches = [train_idx[b] for b in batches]
        if world > 1:
            batches = batches[:len(batches) // world * world]
        bar = tqdm(total=len(batches), initial=state["batch"], desc=f"epoch {state['epoch'] + 1}",
                   disable=rank != 0 or args.no_progress, unit="batch", mininterval=1.0, dynamic_ncols=True)
        net.train()
        err_sum, err_n, mol_epoch, t_epoch = 0.0, 0, 0, 0.0
        while state["batch"] < len(batches):
            t0 = time.perf_counter()
            group = batches[state["batch"]:state["batch"] + world]
            z, pos, cu, y = batcher.gather(group[rank] if world > 1 else group[0])
            n_mol = len(y)
            if augment:
                z, pos, cu, y = merge_pairs(z, pos, cu, y)
            inp, yt = Batcher.to_tensors(z, pos, cu, y, device, config["layout"])
            if config["warmup_steps"] and state["step"] < config["warmup_steps"]:
                for g in opt.param_groups:
                    g["lr"] = config["lr"] * (state["step"] + 1) / config["warmup_steps"]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                pred = net(**_model_inputs(inp), include_atomref=False)
            target_t = yt.to(pred.dtype) if not amp else yt.float()
            loss = F.l1_loss(pred.float() if amp else pred, target_t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config["clip"]:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config["clip"])
            opt.step()
            state["batch"] += world
            state["step"] += 1
            dt = time.perf_counter() - t0
            t_epoch += dt
            mol_epoch += n_mol * world
            state["train_seconds"] += dt
            state["molecules"] += n_mol * world
            err_sum += float(loss.detach()) * len(y)
            err_n += len(y)
            bar.update(world)
            bar.set_postfix_str(f"{mol_epoch / max(t_epoch, 1e-9):.0f} mol/s, MAE {err_sum / err_n:.4g} {config['unit']}",
                                refresh=False)
            if args.time_budget is not None and time.perf_counter() - t_start >= args.time_budget:
                out_of_time = True
            if world > 1:
                flag = torch.tensor([1.0 if out_of_time else 0.0])
                torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
                out_of_time = bool(flag.item())
            if out_of_time:
                break
            if (config.get("eval_every") and state["step"] % config["eval_every"] == 0
                    and state["batch"] < len(batches)):
                break   # validate + checkpoint mid-epoch; the same epoch then continues where it stopped
        bar.close()
        epoch_done = state["batch"] >= len(batches)
        # ---- validation (every process computes it, so schedulers stay in lock-step), checkpoint, metrics
        val_pred = predict_indices(model, batcher, val_idx, device, layout=config["layout"], amp=amp)
        val_mae = float(np.abs(val_pred - batcher.res[val_idx]).mean()) if len(val_idx) else float("nan")
        if epoch_done:
            state["epoch"] += 1
            state["batch"] = 0
            if not (config["warmup_steps"] and state["step"] < config["warmup_steps"]):
                sched.step(val_mae)
        row = {"epoch": state["epoch"] if epoch_done else state["epoch"] + state["batch"] / max(len(batches), 1),
               "step": state["step"], "train_seconds": round(state["train_seconds"], 3), "lr": _lr_now(opt),
               "train_mae": err_sum / max(err_n, 1), "val_mae": val_mae,
               "molecules_per_s": mol_epoch / max(t_epoch, 1e-9)}
        if rank == 0:
            # metrics first: a kill before last.pt is replaced leaves a row that --resume trims and redoes
            _append_metrics(metrics_path, fields, row)
            if val_mae < state["best_val"]:
                state["best_val"] = val_mae
                save_atomic({"model": model.state_dict(), "val_mae": val_mae, "epoch": row["epoch"],
                             "version": CKPT_VERSION}, best_path)
            ckpt = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "torch_rng": torch.get_rng_state(), "state": dict(state), "version": CKPT_VERSION}
            if torch.cuda.is_available():
                ckpt["cuda_rng"] = torch.cuda.get_rng_state_all()
            save_atomic(ckpt, last_path)
            print(f"epoch {row['epoch']:.2f}  step {state['step']}  val MAE {val_mae:.5g} {config['unit']}  "
                  f"train MAE {row['train_mae']:.5g}  lr {row['lr']:.3g}  {row['molecules_per_s']:.0f} mol/s",
                  flush=True)
        else:
            state["best_val"] = min(state["best_val"], val_mae)
        summary = {"run_dir": run_dir, "val_mae": val_mae, "best_val_mae": state["best_val"],
                   "molecules_per_s": state["molecules"] / max(state["train_seconds"], 1e-9),
                   "epoch": row["epoch"], "step": state["step"], "unit": config["unit"], "target": target}
    if rank == 0 and summary:
        print(f"trained {state['molecules']} molecules in {state['train_seconds']:.0f} s of steps: "
              f"{summary['molecules_per_s']:.0f} molecules/s; best val MAE {state['best_val']:.5g} {config['unit']}; "
              f"run folder {run_dir}", flush=True)
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return summary


def _trim_metrics(path: str, fields: List[str], step: int) -> None:
    """Keep only rows up to the checkpointed step (a crash between metrics and checkpoint leaves none extra)."""
    if not os.path.exists(path):
        with open(path, "w", newline="") as fh:
            csv.DictWriter(fh, fields).writeheader()
        return
    with open(path, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= step]
    with open(path + ".tmp", "w", newline="") as fh:
        w = csv.DictWriter(fh, fields)
        w.writeheader()
        w.writerows(rows)
    os.replace(path + ".tmp", path)


def _append_metrics(path: str, fields: List[str], row: dict) -> None:
    with open(path, "a", newline="") as fh:
        csv.DictWriter(fh, fields).writerow(row)


def main(argv: Optional[List[str]] = None) -> Dict[str, float]:
    p = argparse.ArgumentParser(prog="gtkernels train", description=__doc__.split("\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    main()

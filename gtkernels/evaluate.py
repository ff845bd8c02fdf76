"""``gtkernels evaluate RUN_DIR`` (test MAE, parity plot, learning curve) and ``gtkernels predict RUN_DIR FILE``."""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from typing import Dict, List, Optional

import numpy as np
import torch

from .data.molecules import MoleculeFileError, read_xyz
from .data.qm9 import QM9, load_split
from .data.units import QM9_ELEMENTS, atomref
from .data.elements import SYMBOLS


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def evaluate(run_dir: str, which: str = "best", cache: Optional[str] = None, device: str = "auto",
             backend: Optional[str] = None, batch_size: int = 512, plots: bool = True,
             split_name: str = "test") -> Dict[str, float]:
    """Test-set MAE of a run (in the target's standard unit); writes parity.png and learning_curve.png."""
    from .train import Batcher, load_run, predict_indices
    model, config = load_run(run_dir, which, backend)
    dev = _device(device)
    model.to(dev)
    ds = QM9(cache=cache, limit=config.get("limit"), progress=False)
    idx = load_split(os.path.join(run_dir, "split.json"))[split_name]
    batcher = Batcher(ds, config["target"])
    pred_res = predict_indices(model, batcher, idx, dev, batch_size, config.get("layout", "packed"))
    pred = pred_res + batcher.ref_sum[idx]
    true = batcher.y[idx]
    mae = float(np.abs(pred - true).mean())
    result = {"target": config["target"], "unit": config["unit"], "split": split_name, "n": int(len(idx)),
              "mae": mae, "checkpoint": which}
    if plots:
        has_ref = bool(np.any(batcher.ref_sum[idx] != 0))
        # energies: plot target − Σ atomref (atomisation-like values); the raw totals are dominated by the offset
        shown = (batcher.res[idx], pred_res) if has_ref else (true, pred)
        result.update(_plots(run_dir, config, *shown, mae, " − Σ atomref" if has_ref else ""))
    with open(os.path.join(run_dir, f"{split_name}_metrics.json"), "w") as fh:
        json.dump(result, fh, indent=1)
    return result


def _plots(run_dir, config, true, pred, mae, suffix: str = "") -> Dict[str, str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    unit, name = config["unit"], config["target"]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(true, pred, s=2, alpha=0.4)
    lo, hi = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel(f"true {name}{suffix} ({unit})"), ax.set_ylabel(f"predicted {name}{suffix} ({unit})")
    ax.set_title(f"{name}: test MAE {mae:.4g} {unit} (n={len(true)})")
    fig.tight_layout()
    parity = os.path.join(run_dir, "parity.png")
    fig.savefig(parity, dpi=120)
    plt.close(fig)
    curve = os.path.join(run_dir, "learning_curve.png")
    rows = []
    mpath = os.path.join(run_dir, "metrics.csv")
    if os.path.exists(mpath):
        with open(mpath, newline="") as fh:
            rows = list(csv.DictReader(fh))
    fig, ax = plt.subplots(figsize=(6, 4))
    if rows:
        x = [float(r["epoch"]) for r in rows]
        ax.plot(x, [float(r["train_mae"]) for r in rows], "o-", label="train MAE (augmented batches)")
        ax.plot(x, [float(r["val_mae"]) for r in rows], "o-", label="validation MAE")
        ax.set_yscale("log")
    ax.set_xlabel("epoch"), ax.set_ylabel(f"MAE ({unit})"), ax.legend() if rows else None
    ax.set_title(f"{name} learning curve")
    fig.tight_layout()
    fig.savefig(curve, dpi=120)
    plt.close(fig)
    return {"parity_plot": parity, "learning_curve": curve}


def predict(run_dir: str, path: str, which: str = "best", device: str = "auto",
            backend: Optional[str] = None) -> List[float]:
    """Predicted property (standard unit) of every molecule of the (extended) XYZ file ``path``."""
    from .data.batching import pack
    from .train import load_run
    mols = read_xyz(path)
    for k, m in enumerate(mols):
        unknown = sorted(set(int(z) for z in m.z) - set(QM9_ELEMENTS))
        if unknown:
            names = ", ".join(SYMBOLS.get(z, f"Z={z}") for z in unknown)
            raise ValueError(f"{path}: molecule {k + 1} contains {names}; the model was trained on QM9, which "
                             f"only has H, C, N, O, F, so it cannot predict it")
    model, config = load_run(run_dir, which, backend)
    dev = _device(device)
    model.to(dev)
    dtype = model.embedding.weight.dtype
    out: List[float] = []
    ref = atomref(config["target"])
    with torch.no_grad():
        for i in range(0, len(mols), 256):
            chunk = mols[i:i + 256]
            z, pos, cu = pack(chunk, torch.float64)
            res = model(z.to(dev), pos.to(dev).to(dtype), cu_seqlens=cu.to(dev), include_atomref=False)
            out += [float(r) + float(ref[m.z].sum()) for r, m in zip(res.double().cpu(), chunk)]
    return out


def main_evaluate(argv=None) -> Dict[str, float]:
    p = argparse.ArgumentParser(prog="gtkernels evaluate", description="test MAE and plots of a training run")
    p.add_argument("run_dir")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--split", default="test", choices=["test", "val"])
    p.add_argument("--cache", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--backend", default=None, choices=[None, "auto", "reference", "cpu"])
    a = p.parse_args(argv)
    r = evaluate(a.run_dir, a.checkpoint, a.cache, a.device, a.backend, split_name=a.split)
    print(f"{r['split']} MAE {r['target']}: {r['mae']:.5g} {r['unit']}  ({r['n']} molecules, {a.checkpoint} checkpoint)")
    print(f"parity plot: {r['parity_plot']}\nlearning curve: {r['learning_curve']}")
    return r


def main_predict(argv=None) -> List[float]:
    p = argparse.ArgumentParser(prog="gtkernels predict", description="predict the run's property for molecules")
    p.add_argument("run_dir")
    p.add_argument("xyz", help="(extended) XYZ file, one or more molecules")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--device", default="auto")
    a = p.parse_args(argv)
    try:
        values = predict(a.run_dir, a.xyz, a.checkpoint, a.device)
    except (MoleculeFileError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2)
    with open(os.path.join(a.run_dir, "config.json")) as fh:
        config = json.load(fh)
    for k, v in enumerate(values):
        print(f"{a.xyz}[{k}]\t{config['target']} = {v:.6g} {config['unit']}")
    return values

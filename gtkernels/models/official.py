"""Load checkpoints of the paper's official code (GitHub yoniLc/GeometricTransformerMolecule) into ours.

The official ``GeoTransformer`` names its parameters ``AtomEmb.weight [50, d]``, ``pos_encoder.{net,embed}``,
``Encoder.layers.N.self_attn.{linears,transform_dist.seq}``, ``Encoder.layers.N.feed_forward.{0.weight,
0.weight2,2.weight}`` (its GEGLU keeps both matrices in one module), ``Encoder.layers.N.sublayer.{0,1}.norm``,
``Encoder.norm``, ``pred_net.0.out_net.0`` (schnetpack ``MLP`` with one ``Dense`` d→1) and, for targets with atom
references, ``atomref.weight``: schnetpack's atomref table as an ``Embedding [100, 1]`` (rows = atomic numbers
0..99; only H, C, N, O, F are non-zero for QM9). Its μ and σ (``property_stats``) and its number of heads
(``nhead``) are plain attributes, not in the state dict: pass them, or pass the module object itself.

Its ``Main.py`` saves the whole module (``torch.save(model)``), a pickle of its classes rather than a state
dict. :func:`load_official` takes that module object; reading the file needs the paper's classes importable::

    import sys; sys.path.insert(0, "GeometricTransformerMolecule")   # its GeometricTransformer.py, schnetpack v1
    module = torch.load("best_model", map_location="cpu", weights_only=False)   # only for files you trust
    model = load_official(module, target="U0")            # heads, μ and σ read from the module
    torch.save(module.state_dict(), "official_U0.pt")      # a plain state dict, loadable without those classes

Units: that code trains in schnetpack v1's QM9 units (ASE units: eV for every energy, e·Å for μ, Å³ for α, Å²
for ⟨R²⟩; :data:`gtkernels.data.units.SCHNETPACK_V1`). :func:`load_official` converts μ, σ and the atomref
table to this package's units (meV, D, a₀³, a₀²), so the model predicts what a gtkernels model of that target
predicts (and :class:`~gtkernels.ase_calculator.GTCalculator` gives eV).
"""
from __future__ import annotations

import os
import pickle
import re
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from ..data.units import SCHNETPACK_V1, TARGET_NAMES
from .transformer import GeometricTransformer

_RULES = [
    (r"^AtomEmb\.weight$", "embedding.weight"),
    (r"^pos_encoder\.(net\.\d+\.(?:weight|bias))$", r"encoding.\1"),
    (r"^pos_encoder\.(embed\.(?:weight|bias))$", r"encoding.\1"),
    (r"^Encoder\.layers\.(\d+)\.self_attn\.(linears\.\d\.(?:weight|bias))$", r"layers.\1.attn.\2"),
    (r"^Encoder\.layers\.(\d+)\.self_attn\.(transform_dist\.seq\.\d+\.(?:weight|bias))$", r"layers.\1.attn.\2"),
    (r"^Encoder\.layers\.(\d+)\.feed_forward\.0\.weight$", r"layers.\1.ff.0.w1.weight"),
    (r"^Encoder\.layers\.(\d+)\.feed_forward\.0\.weight2$", r"layers.\1.ff.0.w2.weight"),
    (r"^Encoder\.layers\.(\d+)\.feed_forward\.2\.weight$", r"layers.\1.ff.2.weight"),
    (r"^Encoder\.layers\.(\d+)\.sublayer\.0\.norm\.(weight|bias)$", r"layers.\1.norm1.\2"),
    (r"^Encoder\.layers\.(\d+)\.sublayer\.1\.norm\.(weight|bias)$", r"layers.\1.norm2.\2"),
    (r"^Encoder\.norm\.(weight|bias)$", r"norm.\1"),
    (r"^pred_net\.0\.out_net\.0\.(weight|bias)$", r"head.\1"),
    (r"^atomref\.weight$", "atomref"),
]
#: Units of μ, σ and atomref that :func:`load_official` accepts.
UNITS = ("schnetpack", "gtkernels")


def convert_official_state_dict(sd: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Official parameter names → ours (values untouched; ``atomref`` keeps its ``[Z, 1]`` shape).

    Raises ``ValueError`` naming the parameters with no counterpart (nothing is silently dropped), and saying
    so when ``sd`` is a gtkernels state dict rather than one of the paper's code."""
    _refuse_gtkernels(sd, "this state dict")
    out: Dict[str, Tensor] = {}
    unknown = []
    for name, value in sd.items():
        name = name[len("module."):] if name.startswith("module.") else name  # DataParallel checkpoints
        for pattern, repl in _RULES:
            if re.match(pattern, name):
                out[re.sub(pattern, repl, name)] = value
                break
        else:
            unknown.append(name)
    if unknown:
        shown = ", ".join(repr(n) for n in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise ValueError(f"{len(unknown)} parameter(s) of the official checkpoint have no counterpart in gtkernels: "
                         f"{shown}. Expected the names of the paper's GeoTransformer (AtomEmb.*, pos_encoder.*, "
                         f"Encoder.*, pred_net.0.out_net.0.*, atomref.weight)")
    return out


def _refuse_gtkernels(sd, what: str) -> None:
    """A gtkernels checkpoint or state dict is not an official one: say what to call instead."""
    if not isinstance(sd, dict):
        return
    inner = sd.get("model") if isinstance(sd.get("model"), dict) else sd
    if "embedding.weight" in inner or {"mean", "std"} <= set(inner):
        if inner is not sd or "val_mae" in sd or "optimizer" in sd:
            raise ValueError(f"{what} is a checkpoint written by `gtkernels train` (a run folder's best.pt / "
                             f"last.pt), not one of the paper's code: load its run folder with "
                             f"gtkernels.train.load_run(run_dir), or GTCalculator(run_dir) for ASE")
        raise ValueError(f"{what} is a gtkernels GeometricTransformer state dict, not one of the paper's code: "
                         f"load it with GeometricTransformer(...).load_state_dict(state_dict)")


def _read(checkpoint) -> Tuple[Dict[str, Tensor], dict, str]:
    """``(state dict, attributes of a module object, description)`` of what ``load_official`` was given."""
    if isinstance(checkpoint, nn.Module):
        attrs = {k: getattr(checkpoint, k) for k in ("nhead", "mean", "std") if hasattr(checkpoint, k)}
        return checkpoint.state_dict(), attrs, f"the {type(checkpoint).__name__} module"
    if isinstance(checkpoint, (str, os.PathLike)):
        path = os.fspath(checkpoint)
        what = f"checkpoint file {path!r}"
        if os.path.isdir(path):
            raise ValueError(f"{path!r} is a folder; load_official takes a checkpoint file of the paper's code (for "
                             f"a gtkernels run folder, call gtkernels.train.load_run({path!r}))")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{what} does not exist")
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            if "Weights only load failed" not in str(exc):
                raise ValueError(f"{what} is not a readable torch checkpoint: {str(exc).splitlines()[0]}") from None
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
            raise ValueError(
                f"{what} holds pickled Python objects, not a state dict (the paper's Main.py saves the whole module "
                f"with torch.save(model)). With the paper's GeometricTransformer.py and schnetpack v1 importable, "
                f"load the module yourself (module = torch.load(path, weights_only=False), only for a file you "
                f"trust) and pass it: load_official(module, target=...)"
                + (f" (its first class: {found.group(1)})" if found else "")) from None
        except Exception as exc:  # empty (EOFError), truncated (RuntimeError), garbage (KeyError, ...)
            detail = str(exc).splitlines()[0] if str(exc) else ""
            raise ValueError(f"{what} is not a readable torch checkpoint (empty, truncated or another format): "
                             f"{type(exc).__name__} {detail}".rstrip()) from None
    elif isinstance(checkpoint, dict):
        sd, what = checkpoint, "the given dict"
    else:
        raise TypeError(f"checkpoint must be a path, a state dict or the paper's nn.Module, got "
                        f"{type(checkpoint).__name__}")
    _refuse_gtkernels(sd, what)
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise ValueError(f"{what} holds a {type(sd).__name__}, not a state dict")
    return sd, {}, what


def _atomref(ref: Optional[Tensor], max_z: int) -> Tensor:
    """The official ``atomref.weight`` (``[Z, 1]``, schnetpack's Z = 100, or ``[Z]``) → float64 ``[max_z]``.
    Rows beyond the embedding are dropped when zero; a non-zero one is an element the model cannot take."""
    if ref is None:
        return torch.zeros(max_z, dtype=torch.float64)
    if ref.dim() == 2 and ref.shape[1] == 1:
        ref = ref[:, 0]
    if ref.dim() != 1:
        raise ValueError(f"atomref.weight must be [Z, 1] (schnetpack's atomref table) or [Z], got shape "
                         f"{tuple(ref.shape)}")
    ref = ref.detach().to("cpu", torch.float64)
    if ref.shape[0] > max_z:
        beyond = torch.nonzero(ref[max_z:]).flatten() + max_z
        if beyond.numel():
            raise ValueError(f"atomref.weight {tuple(ref.shape)} has non-zero references for atomic numbers "
                             f"{beyond.tolist()}, beyond the embedding's {max_z} rows (AtomEmb.weight): this "
                             f"checkpoint is inconsistent")
        ref = ref[:max_z]
    return torch.cat([ref, ref.new_zeros(max_z - ref.shape[0])])


def load_official(checkpoint, num_heads: Optional[int] = None, mean: Optional[float] = None,
                  std: Optional[float] = None, backend: str = "auto", target: Optional[str] = None, *,
                  units: str = "schnetpack") -> GeometricTransformer:
    """A :class:`GeometricTransformer` holding the weights of an official checkpoint, predicting in this
    package's units.

    Args:
        checkpoint: a file path (a ``state_dict``, or a dict with ``model`` / ``state_dict`` /
            ``model_state_dict``), such a dict, or the paper's ``GeoTransformer`` module object (what its
            ``Main.py`` pickles with ``torch.save(model)``; see the module docstring for reading that file).
        num_heads, mean, std: the official run's ``nhead`` and ``property_stats`` (per-atom μ, σ of the target,
            in ``units``; its ``Main.py`` logs them as ``Statistics = μ,σ``). Read from a module object; for a
            state dict the defaults are the paper's 256 heads, μ = 0, σ = 1.
        target: the trained property (one of :data:`~gtkernels.data.units.TARGET_NAMES`). Required with
            ``units="schnetpack"``: the paper's code does not record it, and the unit conversion depends on it.
        units: ``"schnetpack"`` (default): μ, σ and the checkpoint's atomref table are in schnetpack v1 units
            (the paper's code: eV, e·Å, Å³, Å²) and are converted to ours (:mod:`gtkernels.data.units`);
            ``"gtkernels"``: they are already in ours.
        backend: the fused backend of the returned model.

    Sizes (layers, d_model, ψω and φ widths, embedding rows) are read from the weights.
    """
    if units not in UNITS:
        raise ValueError(f"units must be one of {', '.join(map(repr, UNITS))}, got {units!r}")
    if target is not None and target not in TARGET_NAMES:
        raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGET_NAMES)}")
    if units == "schnetpack" and target is None:
        raise ValueError("pass target= (one of " + ", ".join(TARGET_NAMES) + "): the paper's checkpoints do not "
                         "record what they predict, and their schnetpack units are converted per target (or pass "
                         "units='gtkernels' when μ, σ and atomref are already in gtkernels units)")
    sd, attrs, what = _read(checkpoint)
    given = {"num_heads": num_heads, "mean": mean, "std": std}
    for ours_name, theirs in (("num_heads", "nhead"), ("mean", "mean"), ("std", "std")):
        if theirs not in attrs:
            continue
        value = attrs[theirs]
        value = value.item() if isinstance(value, Tensor) else value
        if given[ours_name] is not None and float(given[ours_name]) != float(value):
            raise ValueError(f"{ours_name}={given[ours_name]!r} contradicts {what}'s {theirs} = {value!r}; "
                             f"leave {ours_name} out to use the module's")
        given[ours_name] = value
    num_heads = int(256 if given["num_heads"] is None else given["num_heads"])
    mean = float(0.0 if given["mean"] is None else given["mean"])
    std = float(1.0 if given["std"] is None else given["std"])
    scale = SCHNETPACK_V1[target][1] if units == "schnetpack" else 1.0

    ours = convert_official_state_dict(sd)
    missing = [k for k in ("embedding.weight", "encoding.net.0.weight", "layers.0.attn.transform_dist.seq.0.weight")
               if k not in ours]
    if missing:
        raise ValueError(f"{what} lacks parameters of the paper's GeoTransformer: {', '.join(missing)} (ours)")
    max_z, d_model = ours["embedding.weight"].shape
    num_layers = 1 + max(int(k.split(".")[1]) for k in ours if k.startswith("layers."))
    psi_layers = sum(1 for k in ours if k.startswith("layers.0.attn.transform_dist.seq.") and k.endswith("weight")) - 2
    model = GeometricTransformer("paper", num_layers=num_layers, d_model=d_model, num_heads=num_heads,
                                 psi_hidden=ours["layers.0.attn.transform_dist.seq.0.weight"].shape[0],
                                 psi_layers=psi_layers, phi_hidden=ours["encoding.net.0.weight"].shape[0],
                                 max_z=max_z, mean=mean * scale, std=std * scale, backend=backend, target=target)
    ours["atomref"] = _atomref(ours.get("atomref"), max_z) * scale
    ours["mean"], ours["std"] = model.mean.clone(), model.std.clone()
    model.load_state_dict(ours, strict=True)
    return model

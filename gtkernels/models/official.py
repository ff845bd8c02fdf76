"""Load checkpoints of the paper's official code (GitHub yoniLc/GeometricTransformerMolecule) into ours.

The official ``GeoTransformer`` names its parameters ``AtomEmb``, ``pos_encoder.{net,embed}``,
``Encoder.layers.N.self_attn.{linears,transform_dist.seq}``, ``Encoder.layers.N.feed_forward.{0.weight,
0.weight2,2.weight}`` (its GEGLU keeps both matrices in one module), ``Encoder.layers.N.sublayer.{0,1}.norm``,
``Encoder.norm``, ``pred_net.0.out_net.0`` (schnetpack ``MLP`` with one ``Dense`` d→1) and ``atomref.weight``
(an ``Embedding [50, 1]``). Its μ and σ (``property_stats``) are plain attributes, not saved: pass them.
The number of heads is not recoverable from the weights either (the paper: 256).
"""
from __future__ import annotations

import re
from typing import Dict, Optional

import torch
from torch import Tensor

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


def convert_official_state_dict(sd: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Official parameter names → ours. Unknown names raise (nothing is silently dropped)."""
    out: Dict[str, Tensor] = {}
    for name, value in sd.items():
        name = name[len("module."):] if name.startswith("module.") else name  # DataParallel checkpoints
        for pattern, repl in _RULES:
            if re.match(pattern, name):
                new = re.sub(pattern, repl, name)
                out[new] = value.reshape(-1) if new == "atomref" else value
                break
        else:
            raise KeyError(f"parameter {name!r} of the official checkpoint has no counterpart in gtkernels")
    return out


def load_official(checkpoint, num_heads: int = 256, mean: float = 0.0, std: float = 1.0,
                  backend: str = "auto", target: Optional[str] = None) -> GeometricTransformer:
    """A :class:`GeometricTransformer` holding the weights of an official checkpoint.

    ``checkpoint``: a path (a ``state_dict``, or a dict with ``model`` / ``state_dict`` / ``model_state_dict``)
    or such a dict. Sizes (layers, d_model, ψω and φ widths) are read from the weights; ``num_heads``, ``mean``
    and ``std`` must be given as the official run used them.
    """
    sd = checkpoint
    if isinstance(checkpoint, str):
        sd = torch.load(checkpoint, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    ours = convert_official_state_dict(sd)
    d_model = ours["embedding.weight"].shape[1]
    num_layers = 1 + max(int(k.split(".")[1]) for k in ours if k.startswith("layers."))
    psi_layers = sum(1 for k in ours if k.startswith("layers.0.attn.transform_dist.seq.") and k.endswith("weight")) - 2
    model = GeometricTransformer("paper", num_layers=num_layers, d_model=d_model, num_heads=num_heads,
                                 psi_hidden=ours["layers.0.attn.transform_dist.seq.0.weight"].shape[0],
                                 psi_layers=psi_layers, phi_hidden=ours["encoding.net.0.weight"].shape[0],
                                 max_z=ours["embedding.weight"].shape[0], mean=mean, std=std,
                                 backend=backend, target=target)
    if "atomref" not in ours:
        ours["atomref"] = torch.zeros_like(model.atomref)
    ours["mean"], ours["std"] = model.mean.clone(), model.std.clone()
    model.load_state_dict(ours, strict=True)
    return model

"""``gtkernels.models.RMAT``: the released R-MAT (docs/semantics.md §7) on the fused relative-attention op.

The architecture and state dict are :class:`gtkernels_py.rmat.RMAT`'s (huggingmolecules' ``RMatModel``); the
attention of every layer is :class:`gtkernels.FusedRelativeAttention`, which builds b_ij inside the op from
positions and the int16 graph code, so nothing N×N×d reaches memory. The batch geometry is prepared once per
forward and shared by the layers.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

import gtkernels_py.rmat as spec
from gtkernels_py.relative_attention import RELATION_CHANNELS, RelativeAttention

from ..data.rmat_features import DUMMY_FEATURE
from ..nn import FusedRelativeAttention
from ..ops.geometry import prepare_geometry
from ..ops.relative_attention import check_relation_values, relation_tensor

#: Model sizes: ``released`` is R-MAT's published configuration; the others are for CPU training.
RMAT_PRESETS = {
    "released": dict(num_layers=10, d_model=768, num_heads=12, d_ff=1536),
    "base": dict(num_layers=6, d_model=256, num_heads=8, d_ff=512),
    "small": dict(num_layers=4, d_model=128, num_heads=8, d_ff=256),
    "tiny": dict(num_layers=2, d_model=32, num_heads=4, d_ff=64),
}


def _preset(preset: str, overrides: dict) -> dict:
    if preset not in RMAT_PRESETS:
        raise ValueError(f"unknown R-MAT preset {preset!r}; choose one of {', '.join(RMAT_PRESETS)}")
    return {**RMAT_PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}


def _check_inputs(features: Tensor, pos: Tensor, graph_code: Tensor, mask: Optional[Tensor],
                  cu_seqlens: Optional[Tensor], d_atom: int) -> None:
    for name, t in (("features", features), ("pos", pos), ("graph_code", graph_code)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    packed = cu_seqlens is not None
    if features.dim() != (2 if packed else 3) or features.shape[-1] != d_atom:
        raise ValueError(f"features must be {'[T, ' if packed else '[B, N, '}{d_atom}] "
                         f"({'packed' if packed else 'padded'}), got shape {tuple(features.shape)}")
    if tuple(pos.shape) != tuple(features.shape[:-1]) + (3,):
        raise ValueError(f"pos must have shape {tuple(features.shape[:-1]) + (3,)} to match features "
                         f"{tuple(features.shape)}, got {tuple(pos.shape)}")
    if mask is not None and packed:
        raise ValueError("pass mask (padded) or cu_seqlens (packed), not both")


class RMAT(spec.RMAT):
    """R-MAT on the fused op: :class:`gtkernels_py.rmat.RMAT` with :class:`gtkernels.FusedRelativeAttention`.

    Args:
        preset: ``"released"`` (default: 10 layers, d_model 768, 12 heads, d_ff 1536), ``"base"``, ``"small"``,
            ``"tiny"``; ``num_layers`` / ``d_model`` / ``num_heads`` / ``d_ff`` override it.
        backend: ``"auto"``, ``"reference"``, ``"cpu"`` or ``"triton"`` (:func:`gtkernels.relative_attention`).
        validate: check positions and graph codes once per forward (a host sync).
        dropout, d_atom, d_edge, d_output: as :class:`gtkernels_py.rmat.RMAT`.

    ``forward(features, pos, graph_code, mask=None, *, cu_seqlens=None, max_seqlen=None) → [B, d_output]``:
    padded ``features [B, N, 37]``, ``pos [B, N, 3]`` Å, int16 ``graph_code [B, N, N]``, bool ``mask [B, N]``
    (None: rows with any non-zero feature), or packed ``features [T, 37]``, ``pos [T, 3]``, ``graph_code [P]``
    and int32 ``cu_seqlens [B + 1]`` with the largest molecule's size ``max_seqlen`` (a host int). The dummy
    nodes are the rows whose dummy flag (feature column 1) is set; their positions are never read. Outputs in the
    weights' dtype. :meth:`reference_forward` runs the same weights as the released eager model.
    """

    def __init__(self, preset: str = "released", *, backend: str = "auto", validate: bool = True,
                 num_layers: Optional[int] = None, d_model: Optional[int] = None, num_heads: Optional[int] = None,
                 d_ff: Optional[int] = None, dropout: float = 0.0, d_atom: int = spec.D_ATOM,
                 d_edge: int = RELATION_CHANNELS, d_output: int = 1):
        cfg = _preset(preset, dict(num_layers=num_layers, d_model=d_model, num_heads=num_heads, d_ff=d_ff))
        for name, value in cfg.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        super().__init__(**cfg, d_atom=d_atom, d_edge=d_edge, d_output=d_output, dropout=dropout,
                         attention=FusedRelativeAttention, backend=backend, validate=False)
        self.config = {"preset": preset, **cfg, "d_atom": d_atom, "d_edge": d_edge, "d_output": d_output,
                       "dropout": dropout, "backend": backend}
        self.backend, self.validate, self.d_atom, self.d_edge = backend, validate, d_atom, d_edge

    def forward(self, features: Tensor, pos: Tensor, graph_code: Tensor, mask: Optional[Tensor] = None, *,
                cu_seqlens: Optional[Tensor] = None, max_seqlen: Optional[int] = None) -> Tensor:
        _check_inputs(features, pos, graph_code, mask, cu_seqlens, self.d_atom)
        x_in = features.to(self.src_embed.lut.weight.dtype)
        dummy = features[..., DUMMY_FEATURE] != 0
        if cu_seqlens is None and mask is None:
            mask = spec.atom_mask(x_in)
        pos = pos if pos.dtype in (torch.float32, torch.float64) else pos.float()
        # dummy nodes have no position: zero them so the geometry's checks see finite values there
        pos = pos.masked_fill(dummy[..., None], 0.0)
        geom = prepare_geometry(pos, mask if cu_seqlens is None else None, cu_seqlens=cu_seqlens,
                                max_seqlen=max_seqlen, validate=False)
        if self.validate and not torch.compiler.is_compiling():
            check_relation_values(geom, graph_code, dummy)
        x = self.encoder(self.embed(x_in), pos=geom, graph_code=graph_code, dummy=dummy)
        if cu_seqlens is None:
            return self.generator(x, mask)
        x, real = _padded(x, geom)
        return self.generator(x, real)

    def reference_forward(self, features: Tensor, pos: Tensor, graph_code: Tensor,
                          mask: Optional[Tensor] = None) -> Tensor:
        """The released eager model on these weights (padded inputs as :meth:`forward`): b ``[B, N, N, C]``
        materialised from positions and codes, then :class:`gtkernels_py.rmat.RMAT`'s forward with the spec's
        attention on every layer (the weights are shared, not copied)."""
        x_in = features.to(self.src_embed.lut.weight.dtype)
        mask = spec.atom_mask(x_in) if mask is None else mask
        dummy = features[..., DUMMY_FEATURE] != 0
        relation = relation_tensor(pos, graph_code, mask, dummy, self.d_edge, x_in.dtype)
        x = self.embed(x_in)
        for layer in self.encoder.layers:
            x = layer.sublayer[0](x, lambda h: _reference_attention(layer.self_attn, h, relation, mask))
            x = layer.sublayer[1](x, layer.feed_forward)
        return self.generator(self.encoder.norm(x), mask)

    def extra_repr(self) -> str:
        return f"preset={self.config['preset']!r}, backend={self.backend!r}"


def _reference_attention(attn: FusedRelativeAttention, x: Tensor, relation: Tensor, mask: Tensor) -> Tensor:
    """The spec's ``MultiHeadRelativeAttention`` forward on the weights of a fused layer."""
    q, k, v = (lin(x).unflatten(-1, (attn.num_heads, attn.d_k)) for lin in attn.linear_layers)
    z = RelativeAttention.forward(attn.attention, q, k, v, relation, mask)
    return attn.output_linear(z.flatten(-2))


def _padded(x: Tensor, geom) -> tuple:
    """Packed rows ``x [T, d]`` as ``([B, max_atoms, d], bool mask [B, max_atoms])`` (zeros on padding)."""
    seg = geom.seg
    counts = seg[1:] - seg[:-1]
    batch = counts.numel()
    molecule = torch.repeat_interleave(torch.arange(batch, device=x.device), counts, output_size=x.shape[0])
    slot = torch.arange(x.shape[0], device=x.device) - seg[molecule]
    out = x.new_zeros(batch, geom.max_atoms, x.shape[-1]).index_put((molecule, slot), x)
    real = torch.zeros(batch, geom.max_atoms, dtype=torch.bool, device=x.device).index_put(
        (molecule, slot), torch.ones_like(slot, dtype=torch.bool))
    return out, real

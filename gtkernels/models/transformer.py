"""``gtkernels.models.GeometricTransformer``: the paper's model (docs/semantics.md §2) on the fused kernels."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

import gtkernels_py
from gtkernels_py.modules import EncoderBlock

from ..data.batching import cu_seqlens_from_batch
from ..nn import FusedGeometricAttention, GeometricEncoding
from ..ops.geometry import prepare_geometry

#: Model sizes. ``paper`` is the configuration of Choukroun & Wolf (the default); the others are for CPU.
PRESETS = {
    "paper": dict(num_layers=10, d_model=512, num_heads=256),
    "base": dict(num_layers=6, d_model=256, num_heads=16),
    "small": dict(num_layers=4, d_model=128, num_heads=8),
    "tiny": dict(num_layers=2, d_model=64, num_heads=4),
}


class FusedEncoderBlock(EncoderBlock):
    """Pre-LN encoder block whose attention is :class:`gtkernels.FusedGeometricAttention`."""
    attention_cls = FusedGeometricAttention


class GeometricTransformer(gtkernels_py.GeometricTransformer):
    """The Geometric Transformer on the fused kernels; same state-dict names as :class:`gtkernels_py.GeometricTransformer`.

    Args:
        preset: ``"paper"`` (default: 10 blocks, d_model 512, 256 heads), ``"base"``, ``"small"``, ``"tiny"``;
            explicit ``num_layers`` / ``d_model`` / ``num_heads`` override it.
        backend: ``"auto"``, ``"reference"``, ``"cpu"``, ``"triton"`` or ``"cuda"`` for every attention and
            encoding layer.
        precision: ``"ieee"`` (default) or ``"tf32"``: the float32 matmuls of the GPU backends.
        validate: check positions (finite, atoms ≥ 1e-3 Å apart) once per forward at model level
            (layers run with ``validate=False``).
        mean, std, atomref: per-atom standardisation and frozen atom references (buffers), as in the paper.
        target: name of the trained target (informational; stored in ``extra_repr``).

    ``forward(z, pos, mask=None, *, cu_seqlens=None, max_seqlen=None, include_atomref=True)``: padded ``z [B, N]``
    (0 = padding) with ``pos [B, N, 3]`` Å, or packed ``z [T]``, ``pos [T, 3]``, int32 ``cu_seqlens [B+1]`` and
    the largest molecule's size ``max_seqlen`` (a host int; None reads it from cu_seqlens, one host sync).
    Returns ``[B]``. The batch geometry (:func:`gtkernels.prepare_geometry`) is made once per forward and shared
    by every layer; with ``validate=False`` the forward and backward make no host synchronisation.
    ``include_atomref=False`` leaves out Σ atomref (the trainer adds it in float64 to keep precision).
    """

    block_cls = FusedEncoderBlock
    encoding_cls = GeometricEncoding

    def __init__(self, preset: str = "paper", *, backend: str = "auto", validate: bool = True,
                 precision: str = "ieee", target: Optional[str] = None, **kwargs):
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        cfg = {**PRESETS[preset], **kwargs}
        super().__init__(**cfg, backend=backend, validate=False, precision=precision)
        self.config = {"preset": preset, **cfg, "backend": backend, "precision": precision, "target": target}
        self.config.pop("atomref", None)
        self.config.pop("mean", None)
        self.config.pop("std", None)
        self.backend, self.validate, self.target = backend, validate, target

    @staticmethod
    def _positions(pos: Tensor) -> Tensor:
        """float32 and float64 positions pass as they are, whatever the weights' dtype: the ops compute
        distances in float64 (compiled backends) or in pos's dtype (reference), so float64 keeps merged
        fragments 1e4 Å apart exact. Other dtypes are promoted to float32."""
        return pos if pos.dtype in (torch.float32, torch.float64) else pos.float()

    def forward(self, z: Tensor, pos: Tensor, mask: Optional[Tensor] = None, *,
                cu_seqlens: Optional[Tensor] = None, max_seqlen: Optional[int] = None,
                include_atomref: bool = True) -> Tensor:
        pos = self._positions(pos)
        if cu_seqlens is None and mask is None:
            mask = z > 0
        geom = prepare_geometry(pos, mask if cu_seqlens is None else None, cu_seqlens=cu_seqlens,
                                max_seqlen=max_seqlen, validate=self.validate)
        # docs/semantics.md §2, as gtkernels_py.GeometricTransformer.forward, with the read-out kept in the weights'
        # dtype under autocast (a bf16 read-out would round U0 residuals of ~1e5 meV to ~500 meV).
        x = self.embedding(z) + self.encoding(geom)
        for block in self.layers:
            x = block(x, geom)
        with torch.autocast(x.device.type, enabled=False):
            y = self.head(self.norm(x.to(self.head.weight.dtype))).squeeze(-1) * self.std + self.mean
            if include_atomref:
                y = y + self.atomref[z]
            return self.molecule_sum(y, mask, cu_seqlens)

    def forward_batch(self, z: Tensor, pos: Tensor, batch: Tensor, **kwargs) -> Tensor:
        """PyG-style input: ``z [T]``, ``pos [T, 3]``, sorted ``batch [T]`` (molecule id of each atom)."""
        return self.forward(z, pos, cu_seqlens=cu_seqlens_from_batch(batch), **kwargs)

    def forces(self, z: Tensor, pos: Tensor, mask: Optional[Tensor] = None, *,
               cu_seqlens: Optional[Tensor] = None, max_seqlen: Optional[int] = None) -> tuple:
        """``(energy [B], forces = −∂E/∂pos)`` (forces shaped and typed like ``pos``). Only for energy targets."""
        from ..data.units import BY_NAME
        if self.target is not None and self.target in BY_NAME and not BY_NAME[self.target].energy:
            raise ValueError(f"forces are −∂E/∂pos of an energy; this model predicts {self.target!r}")
        with torch.enable_grad():
            p = pos.detach().requires_grad_(True)
            e = self.forward(z, p, mask, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)
            (g,) = torch.autograd.grad(e.sum(), p, create_graph=self.training)
        return e, -g

    def extra_repr(self) -> str:
        return (f"preset={self.config['preset']!r}, backend={self.backend!r}, precision={self.config['precision']!r}, "
                f"target={self.target!r}")

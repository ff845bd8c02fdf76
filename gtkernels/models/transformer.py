"""``gtkernels.models.GeometricTransformer``: the paper's model (docs/semantics.md §2) on the fused kernels.

The architecture is :class:`gtkernels_py.GeometricTransformer`'s; this model builds it with the fused layers
(:class:`gtkernels.FusedGeometricAttention`, :class:`gtkernels.nn.GeometricEncoding`), checks its inputs, and
prepares the batch geometry once per forward for every layer.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple

import torch
from torch import Tensor

import gtkernels_py
from gtkernels_py.modules import EncoderBlock

from ..data.batching import cu_seqlens_from_batch
from ..nn import FusedGeometricAttention, GeometricEncoding
from ..nn._checks import check_atoms
from ..ops.geometry import prepare_geometry

#: Model sizes. ``paper`` is the configuration of Choukroun & Wolf (the default); the others are for CPU.
PRESETS = {
    "paper": dict(num_layers=10, d_model=512, num_heads=256),
    "base": dict(num_layers=6, d_model=256, num_heads=16),
    "small": dict(num_layers=4, d_model=128, num_heads=8),
    "tiny": dict(num_layers=2, d_model=64, num_heads=4),
}


class FusedEncoderBlock(EncoderBlock):
    """:class:`gtkernels_py.EncoderBlock` whose attention is :class:`gtkernels.FusedGeometricAttention`."""

    def __init__(self, d_model: int, num_heads: int, psi_hidden: int = 50, psi_layers: int = 2,
                 dropout: float = 0.0, **attn_kwargs):
        super().__init__(d_model, num_heads, psi_hidden, psi_layers, dropout, attention=FusedGeometricAttention,
                         **attn_kwargs)


class GeometricTransformer(gtkernels_py.GeometricTransformer):
    """The Geometric Transformer on the fused kernels: :class:`gtkernels_py.GeometricTransformer` built with
    :class:`gtkernels.FusedGeometricAttention` and the fused :class:`gtkernels.nn.GeometricEncoding` (same
    architecture, same state-dict names).

    Args:
        preset: ``"paper"`` (default: 10 blocks, d_model 512, 256 heads), ``"base"``, ``"small"``, ``"tiny"``;
            explicit ``num_layers`` / ``d_model`` / ``num_heads`` override it.
        backend: ``"auto"``, ``"reference"``, ``"cpu"``, ``"triton"`` or ``"cuda"`` for every attention and
            encoding layer.
        precision: ``"ieee"`` (default) or ``"tf32"``: the float32 matmuls of the GPU backends.
        validate: check positions (finite, atoms ≥ 1e-3 Å apart) and atomic numbers (``0 <= z < max_z``) once
            per forward at model level (layers run with ``validate=False``).
        mean, std, atomref: per-atom standardisation and frozen atom references (buffers), as in the paper.
        target: name of the trained target (informational; stored in ``extra_repr``).

    ``forward(z, pos, mask=None, *, cu_seqlens=None, max_seqlen=None, include_atomref=True)``: padded ``z [B, N]``
    (0 = padding) with ``pos [B, N, 3]`` Å, or packed ``z [T]``, ``pos [T, 3]``, int32 ``cu_seqlens [B+1]`` and
    the largest molecule's size ``max_seqlen`` (a host int; None reads it from cu_seqlens, one host sync).
    ``z`` is any integer dtype (int64, int32, uint8 as :class:`gtkernels.data.Molecule`'s) with values in
    ``0 .. max_z - 1`` (checked with ``validate``); wrong shapes or dtypes raise ``ValueError`` / ``TypeError``.
    ``forward(data)``: a ``torch_geometric.data.Data`` / ``Batch``, or any object or dict with ``z [T]``,
    ``pos [T, 3]`` and (for several molecules) a sorted ``batch [T]`` (duck-typed: PyG need not be installed;
    without ``batch`` it is one molecule). Returns float64 ``[B]`` (the read-out sums in float64,
    :meth:`gtkernels_py.GeometricTransformer.readout`). The batch geometry (:func:`gtkernels.prepare_geometry`)
    is made once per forward and shared by every layer; with ``validate=False`` the forward and backward make no
    host synchronisation.
    ``include_atomref=False`` leaves out Σ atomref (the trainer adds it in float64 to keep precision).
    """

    def __init__(self, preset: str = "paper", *, backend: str = "auto", validate: bool = True,
                 precision: str = "ieee", target: Optional[str] = None, **kwargs):
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        cfg = {**PRESETS[preset], **kwargs}
        super().__init__(**cfg, attention=FusedGeometricAttention, encoding=GeometricEncoding, backend=backend,
                         validate=False, precision=precision)
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

    def forward(self, z: Tensor, pos: Optional[Tensor] = None, mask: Optional[Tensor] = None, *,
                cu_seqlens: Optional[Tensor] = None, max_seqlen: Optional[int] = None,
                include_atomref: bool = True) -> Tensor:
        if not isinstance(z, Tensor):   # model(data): a PyG Data/Batch or look-alike
            z, pos, cu_seqlens, max_seqlen = graph_inputs(z, pos)
        elif pos is None:
            raise TypeError("model(z, pos, ...) needs the positions pos, or pass one PyG-style object: model(data)")
        z = check_atoms(z, pos, cu_seqlens, self.embedding.num_embeddings, self.validate)
        pos = self._positions(pos)
        if cu_seqlens is None and mask is None:
            mask = z > 0
        geom = prepare_geometry(pos, mask if cu_seqlens is None else None, cu_seqlens=cu_seqlens,
                                max_seqlen=max_seqlen, validate=self.validate)
        return self.network(z, dict(pos=geom), mask, cu_seqlens, include_atomref)

    def forward_batch(self, z: Tensor, pos: Tensor, batch: Tensor, **kwargs) -> Tensor:
        """PyG-style input: ``z [T]``, ``pos [T, 3]``, sorted ``batch [T]`` (molecule id of each atom)."""
        return self.forward(z, pos, cu_seqlens=cu_seqlens_from_batch(batch), **kwargs)

    def forces(self, z: Tensor, pos: Optional[Tensor] = None, mask: Optional[Tensor] = None, *,
               cu_seqlens: Optional[Tensor] = None, max_seqlen: Optional[int] = None,
               batch: Optional[Tensor] = None) -> tuple:
        """``(energy float64 [B], forces = −∂E/∂pos)`` (forces shaped and typed like ``pos``). Only for energy targets.

        Inputs as :meth:`forward` (padded, packed, or ``forces(data)`` for a PyG Data/Batch), or PyG-style
        ``forces(z [T], pos [T, 3], batch=batch [T])``.
        """
        from ..data.units import BY_NAME
        if self.target is not None and self.target in BY_NAME and not BY_NAME[self.target].energy:
            raise ValueError(f"forces are −∂E/∂pos of an energy; this model predicts {self.target!r}")
        if not isinstance(z, Tensor):
            z, pos, cu_seqlens, max_seqlen = graph_inputs(z, pos)
        if not isinstance(pos, Tensor):
            raise TypeError(f"pos must be a torch.Tensor, got {type(pos).__name__}")
        elif batch is not None:
            if mask is not None or cu_seqlens is not None:
                raise ValueError("pass one of mask (padded), cu_seqlens (packed) or batch (PyG-style), not several")
            cu_seqlens = cu_seqlens_from_batch(batch)
        with torch.enable_grad():
            p = pos.detach().requires_grad_(True)
            e = self.forward(z, p, mask, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)
            (g,) = torch.autograd.grad(e.sum(), p, create_graph=self.training)
        return e, -g

    def extra_repr(self) -> str:
        return (f"preset={self.config['preset']!r}, backend={self.backend!r}, precision={self.config['precision']!r}, "
                f"target={self.target!r}")


def graph_inputs(data: Any, pos: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor, int]:
    """``(z [T], pos [T, 3], cu_seqlens int32 [B+1], max_seqlen)`` of a PyG ``Data``/``Batch`` or look-alike.

    Duck-typed: ``data`` has attributes (or, for a dict, keys) ``z`` and ``pos``, and optionally ``batch`` (the
    sorted molecule id of each atom, as PyG's ``Batch`` has it) and ``num_graphs``; no ``batch`` means one
    molecule. Reads ``batch`` on the host (one synchronisation).
    """
    if pos is not None:
        raise TypeError("model(data) takes the batch object alone; pass model(z, pos, ...) for tensors")
    if isinstance(data, Mapping):
        get = data.get
    else:
        def get(key):
            return getattr(data, key, None)
    z, p, batch, num = get("z"), get("pos"), get("batch"), get("num_graphs")
    if not isinstance(z, Tensor) or not isinstance(p, Tensor):
        raise TypeError(f"model(data) needs a torch_geometric Data/Batch, or an object or dict with tensors z [T] "
                        f"and pos [T, 3] (and batch [T] for several molecules); got {type(data).__name__} with "
                        f"z={type(z).__name__}, pos={type(p).__name__}")
    if z.dim() != 1 or p.dim() != 2 or p.shape[-1] != 3 or p.shape[0] != z.shape[0]:
        raise ValueError(f"data.z must be [T] and data.pos [T, 3] (packed atoms of all molecules), got "
                         f"{list(z.shape)} and {list(p.shape)}")
    if batch is None:
        cu = torch.tensor([0, z.shape[0]], dtype=torch.int32, device=z.device)
        return z, p, cu, int(z.shape[0])
    if not isinstance(batch, Tensor) or batch.shape != z.shape:
        raise ValueError(f"data.batch must be a tensor [T] like data.z {list(z.shape)}, got "
                         f"{list(batch.shape) if isinstance(batch, Tensor) else type(batch).__name__}")
    cu = cu_seqlens_from_batch(batch, int(num) if isinstance(num, int) else None)
    return z, p, cu, int((cu[1:] - cu[:-1]).max()) if cu.numel() > 1 else 0

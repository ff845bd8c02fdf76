"""``FusedGeometricAttention``: the paper's geometric multi-head attention on the fused kernels."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

import gtkernels_py
from .._backends import check_backend_at_construction, check_precision, resolve_backend
from ..ops import geometric_attention
from ._checks import check_features, check_weights_dtype


class FusedGeometricAttention(gtkernels_py.GeometricAttention):
    """Drop-in geometric self-attention (docs/semantics.md §2) computed by the fused ops.

    Args:
        d_model: model width; must be divisible by ``num_heads`` (d_k = d_model / num_heads).
        num_heads: number of heads H (the paper: 256).
        psi_hidden, psi_layers: ψω width and number of hidden h→h layers (the paper: 50, 2).
        dropout: dropout on the gated attention matrix (the paper: 0; fused backends need 0).
        bias: bias in the Q, K, V and output projections (the paper: False).
        backend: ``"auto"``, ``"reference"``, ``"cpu"``, ``"triton"`` or ``"cuda"`` (see :func:`gtkernels.backends`).
        precision: ``"ieee"`` (default) or ``"tf32"``: the float32 matmuls of the GPU backends.
        validate: check positions (finite, atoms ≥ 1e-3 Å apart) and cu_seqlens on every call.

    ``forward(x, pos, mask=None, *, cu_seqlens=None, max_seqlen=None)``: ``x [B, N, d_model]``, ``pos [B, N, 3]``,
    bool ``mask [B, N]`` (padded), or ``x [T, d_model]``, ``pos [T, 3]``, int32 ``cu_seqlens [B+1]`` (packed);
    ``pos`` may also be a :class:`~gtkernels.ops.geometry.BatchGeometry` shared by several layers. Returns x's
    shape. ``x`` must have the weights' dtype (a ``TypeError`` says which otherwise), as for ``nn.Linear``. Under ``torch.autocast`` the projections run in the autocast dtype; the fused op then runs in that
    dtype where the backend supports it (triton, cuda: ψω cast down, tensor cores), else in ψω's dtype.

    State dict: ``linears.{0,1,2,3}.weight`` (Q, K, V, output) and ``transform_dist.seq.{0,2,4,6}.{weight,bias}``,
    as the paper's ``MultiHeadedAttention``, so its checkpoints and :class:`gtkernels_py.GeometricAttention`'s load.
    """

    def __init__(self, d_model: int, num_heads: int, psi_hidden: int = 50, psi_layers: int = 2,
                 dropout: float = 0.0, bias: bool = False, backend: str = "auto", validate: bool = True,
                 precision: str = "ieee"):
        for name, value in (("d_model", d_model), ("num_heads", num_heads)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        super().__init__(d_model, num_heads, psi_hidden, psi_layers, dropout, bias)
        check_backend_at_construction(backend)  # fail early on a bad name or a missing build
        check_precision(precision)
        self.backend, self.validate, self.precision = backend, validate, precision

    def forward(self, x: Tensor, pos, mask: Optional[Tensor] = None, *, cu_seqlens: Optional[Tensor] = None,
                max_seqlen: Optional[int] = None) -> Tensor:
        check_features(x, self.d_model, pos, cu_seqlens)
        check_weights_dtype(x, self.linears[0].weight, type(self).__name__)
        q, k, v = (lin(x).unflatten(-1, (self.num_heads, self.d_k)) for lin in self.linears[:3])
        out = self._attend(q, k, v, pos, mask, cu_seqlens, max_seqlen)
        return self.linears[3](out.flatten(-2))

    def _attend(self, q, k, v, pos, mask, cu_seqlens, max_seqlen=None):
        psi = self.transform_dist.params()
        call = dict(mask=mask, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen,
                    dropout_p=self.dropout if self.training else 0.0, backend=self.backend,
                    precision=self.precision, validate=self.validate)
        if q.dtype == psi[0].dtype:
            return geometric_attention(q, k, v, pos, psi, **call)
        # autocast: the projections came out in its low dtype, ψω's weights are float32
        if self._fused_in(q.dtype, q.device, call["dropout_p"]):
            return geometric_attention(q, k, v, pos, [p.to(q.dtype) for p in psi], **call)
        with torch.autocast(q.device.type, enabled=False):
            dt = psi[0].dtype
            out = geometric_attention(q.to(dt), k.to(dt), v.to(dt), pos, psi, **call)
        return out.to(q.dtype)

    def _fused_in(self, dtype: torch.dtype, device: torch.device, dropout_p: float) -> bool:
        """Whether a compiled backend runs this layer's attention in ``dtype``."""
        try:
            return resolve_backend(self.backend, device, dtype, dropout_p) != "reference"
        except (TypeError, ValueError, RuntimeError, NotImplementedError):
            return False

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, num_heads={self.num_heads}, backend={self.backend!r}, "
                f"precision={self.precision!r}")

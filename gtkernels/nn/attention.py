"""``FusedGeometricAttention``: the paper's geometric multi-head attention on the fused kernels."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

import gtkernels_py
from .._backends import check_backend_at_construction
from ..ops import geometric_attention
from ._checks import check_features


class FusedGeometricAttention(gtkernels_py.GeometricAttention):
    """Drop-in geometric self-attention (DESIGN.md §2) computed by the fused ops.

    Args:
        d_model: model width; must be divisible by ``num_heads`` (d_k = d_model / num_heads).
        num_heads: number of heads H (the paper: 256).
        psi_hidden, psi_layers: ψω width and number of hidden h→h layers (the paper: 50, 2).
        dropout: dropout on the gated attention matrix (the paper: 0; fused backends need 0).
        bias: bias in the Q, K, V and output projections (the paper: False).
        backend: ``"auto"``, ``"reference"``, ``"cpu"``, ``"triton"`` or ``"cuda"`` (see :func:`gtkernels.backends`).
        validate: check positions (finite, atoms ≥ 1e-3 Å apart) and cu_seqlens on every call.

    ``forward(x, pos, mask=None, *, cu_seqlens=None)``: ``x [B, N, d_model]``, ``pos [B, N, 3]``, bool ``mask [B, N]``
    (padded), or ``x [T, d_model]``, ``pos [T, 3]``, int32 ``cu_seqlens [B+1]`` (packed). Returns x's shape.

    State dict: ``linears.{0,1,2,3}.weight`` (Q, K, V, output) and ``transform_dist.seq.{0,2,4,6}.{weight,bias}``,
    as the paper's ``MultiHeadedAttention``, so its checkpoints and :class:`gtkernels_py.GeometricAttention`'s load.
    """

    def __init__(self, d_model: int, num_heads: int, psi_hidden: int = 50, psi_layers: int = 2,
                 dropout: float = 0.0, bias: bool = False, backend: str = "auto", validate: bool = True):
        for name, value in (("d_model", d_model), ("num_heads", num_heads)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        super().__init__(d_model, num_heads, psi_hidden, psi_layers, dropout, bias)
        check_backend_at_construction(backend)  # fail early on a bad name or a missing build
        self.backend, self.validate = backend, validate

    def forward(self, x: Tensor, pos: Tensor, mask: Optional[Tensor] = None, *,
                cu_seqlens: Optional[Tensor] = None) -> Tensor:
        check_features(x, self.d_model, pos, cu_seqlens)
        return super().forward(x, pos, mask, cu_seqlens=cu_seqlens)

    def _attend(self, q, k, v, pos, mask, cu_seqlens):
        return geometric_attention(q, k, v, pos, self.transform_dist.params(), mask, cu_seqlens=cu_seqlens,
                                   dropout_p=self.dropout if self.training else 0.0, backend=self.backend,
                                   validate=self.validate)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, num_heads={self.num_heads}, backend={self.backend!r}"

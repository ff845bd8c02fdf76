"""``FusedGeometricAttention``: the paper's geometric multi-head attention on the fused kernels.

The layer is :class:`gtkernels_py.GeometricAttention` (projections and ψω) with
:class:`FusedGeometricInnerAttention` as its ``inner_attn``, and the input checks of the fused modules.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor, nn

import gtkernels_py
from .._backends import check_backend_at_construction, check_precision, resolve_backend
from ..ops import geometric_attention
from ._checks import check_features, check_weights_dtype


class FusedGeometricInnerAttention(nn.Module):
    """The gated softmax product O = (softmax(QKᵀ/√d_k) ⊙ ψω(1/r)²) V of every head, by the fused op
    :func:`gtkernels.geometric_attention`; the fused counterpart of :class:`gtkernels_py.GeometricInnerAttention`.

    Holds no parameters: ψω's come from the calling layer. ``forward(q, k, v, pos, psi_params, mask=None, *,
    cu_seqlens=None, max_seqlen=None)`` as the op (``pos`` may be a :class:`~gtkernels.ops.geometry.BatchGeometry`).
    Under ``torch.autocast`` the projected heads come in the autocast dtype while ψω's weights stay float32: the
    op then runs in the autocast dtype where the backend supports it (ψω cast down), else in ψω's dtype.
    """

    def __init__(self, dropout: float = 0.0, backend: str = "auto", validate: bool = True,
                 precision: str = "ieee"):
        super().__init__()
        self.dropout, self.backend, self.validate, self.precision = dropout, backend, validate, precision

    def forward(self, q: Tensor, k: Tensor, v: Tensor, pos, psi_params: List[Tensor],
                mask: Optional[Tensor] = None, *, cu_seqlens: Optional[Tensor] = None,
                max_seqlen: Optional[int] = None) -> Tensor:
        call = dict(mask=mask, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen,
                    dropout_p=self.dropout if self.training else 0.0, backend=self.backend,
                    precision=self.precision, validate=self.validate)
        if q.dtype == psi_params[0].dtype:
            return geometric_attention(q, k, v, pos, psi_params, **call)
        if self._fused_in(q.dtype, q.device, call["dropout_p"]):
            return geometric_attention(q, k, v, pos, [p.to(q.dtype) for p in psi_params], **call)
        with torch.autocast(q.device.type, enabled=False):
            dt = psi_params[0].dtype
            out = geometric_attention(q.to(dt), k.to(dt), v.to(dt), pos, psi_params, **call)
        return out.to(q.dtype)

    def _fused_in(self, dtype: torch.dtype, device: torch.device, dropout_p: float) -> bool:
        """Whether a compiled backend runs this attention in ``dtype``."""
        try:
            return resolve_backend(self.backend, device, dtype, dropout_p) != "reference"
        except (TypeError, ValueError, RuntimeError, NotImplementedError):
            return False

    def extra_repr(self) -> str:
        return f"dropout={self.dropout}, backend={self.backend!r}, precision={self.precision!r}"


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
    shape. ``x`` must have the weights' dtype (a ``TypeError`` says which otherwise), as for ``nn.Linear``. Under
    ``torch.autocast`` the projections run in the autocast dtype (see :class:`FusedGeometricInnerAttention`).

    The layer is :class:`gtkernels_py.GeometricAttention` with ``inner_attn`` a
    :class:`FusedGeometricInnerAttention`; ``backend``, ``validate`` and ``precision`` are that inner attention's.
    State dict: ``linears.{0,1,2,3}.weight`` (Q, K, V, output) and ``transform_dist.seq.{0,2,4,6}.{weight,bias}``,
    as the paper's ``MultiHeadedAttention``, so its checkpoints and :class:`gtkernels_py.GeometricAttention`'s load.
    """

    def __init__(self, d_model: int, num_heads: int, psi_hidden: int = 50, psi_layers: int = 2,
                 dropout: float = 0.0, bias: bool = False, backend: str = "auto", validate: bool = True,
                 precision: str = "ieee"):
        for name, value in (("d_model", d_model), ("num_heads", num_heads)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        inner_attn = FusedGeometricInnerAttention(dropout, backend, validate, precision)
        super().__init__(d_model, num_heads, psi_hidden, psi_layers, dropout, bias, inner_attn=inner_attn)
        check_backend_at_construction(backend)  # fail early on a bad name or a missing build
        check_precision(precision)

    @property
    def backend(self) -> str:
        return self.inner_attn.backend

    @property
    def validate(self) -> bool:
        return self.inner_attn.validate

    @property
    def precision(self) -> str:
        return self.inner_attn.precision

    def forward(self, x: Tensor, pos, mask: Optional[Tensor] = None, *, cu_seqlens: Optional[Tensor] = None,
                max_seqlen: Optional[int] = None) -> Tensor:
        check_features(x, self.d_model, pos, cu_seqlens)
        check_weights_dtype(x, self.linears[0].weight, type(self).__name__)
        return super().forward(x, pos, mask, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)

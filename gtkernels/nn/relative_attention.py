"""``FusedRelativeAttention``: R-MAT's relative multi-head attention on the fused op (docs/semantics.md §6).

The layers are the spec's :class:`gtkernels_py.MultiHeadRelativeAttention` and
:class:`gtkernels_py.RelativeAttention` (their parameters and state-dict names, huggingmolecules'
``MultiHeadedAttention`` and ``RMatAttention``), whose forward builds b_ij inside
:func:`gtkernels.relative_attention` from positions and the per-pair graph code.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor

import gtkernels_py
from gtkernels_py.relative_attention import RELATION_CHANNELS
from .._backends import resolve_relative_backend
from ..ops.relative_attention import relative_attention
from ._checks import check_features, check_weights_dtype


class FusedRelativeInnerAttention(gtkernels_py.RelativeAttention):
    """The released ``RMatAttention`` (φ_K, φ_V, ``relative_u``, ``relative_v``; no projections) on the fused op.

    ``forward(q, k, v, pos, graph_code, mask=None, *, dummy=None, cu_seqlens=None, max_seqlen=None)`` with
    ``q, k, v [B, N, H, d_k]`` (or packed ``[T, H, d_k]``) and the other arguments as
    :func:`gtkernels.relative_attention`; returns z shaped like ``q``. Dropout (on α and inside φ) in training
    only. State dict as :class:`gtkernels_py.RelativeAttention`.
    """

    def __init__(self, d_model: int, num_heads: int, d_edge: int = RELATION_CHANNELS, dropout: float = 0.0,
                 backend: str = "auto", validate: bool = True):
        super().__init__(d_model, num_heads, d_edge, dropout)
        resolve_relative_backend(backend)  # fail early on a bad name or a backend without R-MAT kernels
        self.backend, self.validate = backend, validate

    def forward(self, q: Tensor, k: Tensor, v: Tensor, pos, graph_code: Tensor, mask: Optional[Tensor] = None, *,
                dummy: Optional[Tensor] = None, cu_seqlens: Optional[Tensor] = None,
                max_seqlen: Optional[int] = None) -> Tensor:
        p = self.dropout if self.training else 0.0
        return relative_attention(q, k, v, pos, graph_code, self.relative_K.params(), self.relative_V.params(), mask,
                                  dummy=dummy, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen,
                                  u=self.relative_u.reshape(self.num_heads, self.d_k),
                                  v_rel=self.relative_v.reshape(self.num_heads, self.d_k),
                                  dropout_p=p, phi_dropout_p=p, backend=self.backend, validate=self.validate)

    def extra_repr(self) -> str:
        return f"dropout={self.dropout}, backend={self.backend!r}"


class FusedRelativeAttention(gtkernels_py.MultiHeadRelativeAttention):
    """Drop-in R-MAT self-attention of one layer (huggingmolecules ``MultiHeadedAttention(RMatAttention)``).

    Args:
        d_model: model width; divisible by ``num_heads`` (d_k = d_model / num_heads; φ's hidden width is d_k).
        num_heads: number of heads H (released: 12).
        d_edge: relation channels C = 14 graph + the distance-basis functions (released: 46).
        dropout: dropout on α and inside φ, in training (released: 0).
        backend: ``"auto"``, ``"reference"``, ``"cpu"`` or ``"triton"`` (:func:`gtkernels.relative_attention`;
            the cuda kernels of this op are not built yet).
        validate: check positions, cu_seqlens and graph codes on every call (a host sync).

    ``forward(x, pos, graph_code, mask=None, *, dummy=None, cu_seqlens=None, max_seqlen=None)``: ``x [B, N,
    d_model]``, ``pos [B, N, 3]`` in Å, int16 ``graph_code [B, N, N]``, bool ``mask [B, N]`` (padded), or
    ``x [T, d_model]``, ``pos [T, 3]``, ``graph_code [P]``, int32 ``cu_seqlens [B + 1]`` (packed); ``dummy``
    marks R-MAT's dummy nodes (see :func:`gtkernels.relative_attention`). Returns x's shape; a padded row's
    output is ``output_linear.bias``, as the spec's.

    State dict: ``linear_layers.{0,1,2}.{weight,bias}`` (Q, K, V), ``output_linear.{weight,bias}`` and
    ``attention.relative_{K,V}.nn.{0,3}.{weight,bias}``, ``attention.relative_u``, ``attention.relative_v``, as
    :class:`gtkernels_py.MultiHeadRelativeAttention`: an R-MAT checkpoint's ``encoder.layers.{l}.self_attn.*``
    entries load as they are.
    """

    def __init__(self, d_model: int, num_heads: int, d_edge: int = RELATION_CHANNELS, dropout: float = 0.0,
                 backend: str = "auto", validate: bool = True):
        for name, value in (("d_model", d_model), ("num_heads", num_heads)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        super().__init__(d_model, num_heads, d_edge, dropout)
        self.d_model = d_model
        inner = FusedRelativeInnerAttention(d_model, num_heads, d_edge, dropout, backend, validate)
        inner.load_state_dict(self.attention.state_dict())  # the spec's initial values: one seed, one module
        self.attention = inner

    @property
    def backend(self) -> str:
        return self.attention.backend

    @property
    def validate(self) -> bool:
        return self.attention.validate

    def forward(self, x: Tensor, pos, graph_code: Tensor, mask: Optional[Tensor] = None, *,
                dummy: Optional[Tensor] = None, cu_seqlens: Optional[Tensor] = None,
                max_seqlen: Optional[int] = None) -> Tensor:
        check_features(x, self.d_model, pos, cu_seqlens)
        check_weights_dtype(x, self.linear_layers[0].weight, type(self).__name__)
        q, k, v = (lin(x).unflatten(-1, (self.num_heads, self.d_k)) for lin in self.linear_layers)
        z = self.attention(q, k, v, pos, graph_code, mask, dummy=dummy, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)
        return self.output_linear(z.flatten(-2))

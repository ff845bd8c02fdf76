"""``GeometricEncoding``: the paper's geometric positional encoding on the fused ops."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

import gtkernels_py
from .._backends import check_backend_at_construction, check_precision
from ..ops import geometric_encoding


class GeometricEncoding(gtkernels_py.GeometricEncoding):
    """PE_i = Linear(1→d_model)(Σ_j φ(1/r_ij)), φ = Linear(1→h) → GELU → Linear(h→1) → GELU, fused.

    ``forward(pos, mask=None, *, cu_seqlens=None, max_seqlen=None)`` → ``[B, N, d_model]`` (or ``[T, d_model]``);
    ``pos`` may be a :class:`~gtkernels.ops.geometry.BatchGeometry`.
    State dict as the paper's ``Pos_encoding``: ``net.{0,2}.{weight,bias}``, ``embed.{weight,bias}``.
    """

    def __init__(self, d_model: int, hidden: int = 50, backend: str = "auto", validate: bool = True,
                 precision: str = "ieee"):
        super().__init__(d_model, hidden)
        check_backend_at_construction(backend)  # fail early on a bad name or a missing build
        check_precision(precision)
        self.backend, self.validate, self.precision = backend, validate, precision

    def forward(self, pos, mask: Optional[Tensor] = None, *, cu_seqlens: Optional[Tensor] = None,
                max_seqlen: Optional[int] = None) -> Tensor:
        s = geometric_encoding(pos, self.params(), mask, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen,
                               backend=self.backend, precision=self.precision, validate=self.validate)
        return self.embed(s.unsqueeze(-1))

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}, precision={self.precision!r}"

"""Public geometric attention op with backend dispatch (padded or packed layout)."""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

from torch import Tensor

import gtkernels_py
from .._backends import check_precision, mlp_fits_kernels, resolve_backend
from . import registry
from .validation import check_mlp_params, check_positions, check_qkv
from .geometry import BatchGeometry, as_geometry, check_rows, rows_of


def geometric_attention(q: Tensor, k: Tensor, v: Tensor, pos: Union[Tensor, BatchGeometry],
                        psi_params: Sequence[Tensor], mask: Optional[Tensor] = None, *,
                        cu_seqlens: Optional[Tensor] = None, max_seqlen: Optional[int] = None,
                        scale: Optional[float] = None, dropout_p: float = 0.0, backend: str = "auto",
                        precision: str = "ieee", validate: bool = True) -> Tensor:
    """Fused geometric self-attention, O = (softmax(QKᵀ·scale) ⊙ ψω(1/r)²) V (docs/semantics.md §2).

    Same arguments and result as :func:`gtkernels_py.geometric_attention`, plus:

    Args:
        q, k, v: ``[B, N, H, D]`` with optional bool ``mask [B, N]`` (padded), or ``[T, H, D]`` with int32
            ``cu_seqlens [B + 1]`` (packed).
        pos: ``[B, N, 3]`` / ``[T, 3]`` in Å, float32 or float64 whatever q's dtype (distances are computed in
            float64 by the compiled backends, in pos's dtype by the reference); or a
            :class:`~gtkernels.ops.geometry.BatchGeometry` from :func:`~gtkernels.prepare_geometry`, which holds
            the layout (then mask, cu_seqlens and max_seqlen stay None) and is shared by the layers of a model.
        psi_params: ψω weights ``[W0, b0, ..., Wn, bn]`` (``PsiMLP.params()``), shared by all heads.
        max_seqlen: packed only: the largest molecule's atom count, known on the host; None reads it from
            cu_seqlens (a host sync). ``validate=True`` checks it; unchecked and too small, ``backend="cuda"`` on
            CUDA tensors gives NaN for the molecules larger than it (the CPU backends raise).
        backend: ``"auto"`` (fastest available), ``"reference"``, ``"cpu"``, ``"triton"``, ``"cuda"``.
        precision: ``"ieee"`` (exact float32 matmuls, the default) or ``"tf32"`` (TF32 tensor cores for the
            float32 matmuls of the GPU backends, ~1e-3 relative error; the CPU and reference backends are exact).
        validate: run the data-dependent checks (finite positions, atoms ≥ 1e-3 Å apart, cu_seqlens
            contents). They cost a host sync and are skipped under ``torch.compile``.

    Returns:
        O shaped like ``q``. Memory: the compiled backends keep O(R·H) extra (the log-sum-exp), nothing N×N.
    """
    check_qkv(q, k, v, pos)
    geom = as_geometry(pos, mask, cu_seqlens, max_seqlen, validate)
    check_rows("q", q, geom, 2)
    check_positions(geom.positions, "q", q)
    check_mlp_params("psi_params", psi_params, "q", q)
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    check_precision(precision)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)

    backend = resolve_backend(backend, q.device, q.dtype, dropout_p, mlp_fits_kernels(psi_params))
    if backend == "reference":
        return gtkernels_py.geometric_attention(q, k, v, geom.positions, psi_params, geom.mask,
                                                cu_seqlens=geom.cu_seqlens, scale=scale, dropout_p=dropout_p)
    psi = [p.contiguous() for p in psi_params]
    out, _ = registry.attention_fwd(rows_of(q, geom), rows_of(k, geom), rows_of(v, geom), geom.pos_rows, psi,
                                    geom.seg, geom.valid, geom.max_atoms, scale, precision, backend)
    return out.view(q.shape)

"""Public geometric attention op with backend dispatch (padded or packed layout)."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

import gtkernels_py
from .._backends import mlp_fits_kernels, resolve_backend
from . import registry, validation as V
from .layout import packed_segments, padded_segments, padded_to_rows, positions_as_rows


def geometric_attention(q: Tensor, k: Tensor, v: Tensor, pos: Tensor, psi_params: Sequence[Tensor],
                        mask: Optional[Tensor] = None, *, cu_seqlens: Optional[Tensor] = None,
                        scale: Optional[float] = None, dropout_p: float = 0.0, backend: str = "auto",
                        validate: bool = True) -> Tensor:
    """Fused geometric self-attention, O = (softmax(QKᵀ·scale) ⊙ ψω(1/r)²) V (DESIGN.md §2).

    Same arguments and result as :func:`gtkernels_py.geometric_attention`, plus:

    Args:
        q, k, v: ``[B, N, H, D]`` with optional bool ``mask [B, N]`` (padded), or ``[T, H, D]`` with int32
            ``cu_seqlens [B + 1]`` (packed).
        pos: ``[B, N, 3]`` / ``[T, 3]`` in Å, float32 or float64 whatever q's dtype (distances are computed in
            float64 by the compiled backends, in pos's dtype by the reference).
        psi_params: ψω weights ``[W0, b0, ..., Wn, bn]`` (``PsiMLP.params()``), shared by all heads.
        backend: ``"auto"`` (fastest available), ``"reference"``, ``"cpu"``, ``"triton"``, ``"cuda"``.
        validate: run the data-dependent checks (finite positions, atoms ≥ 1e-3 Å apart, cu_seqlens
            contents). They cost a host sync and are skipped under ``torch.compile``.

    Returns:
        O shaped like ``q``. Memory: the compiled backends keep O(R·H) extra (the log-sum-exp), nothing N×N.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        V.check_tensor(name, t, (3, 4))
    V.check_tensor("pos", pos)
    if q.dtype not in V._FLOATS:
        raise TypeError(f"q must be a floating tensor, got {q.dtype}")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must have one shape, got q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    if tuple(pos.shape) != tuple(q.shape[:-2]) + (3,):
        raise ValueError(f"pos must have shape {tuple(q.shape[:-2]) + (3,)} to match q {tuple(q.shape)}, "
                         f"got {tuple(pos.shape)}")
    V.check_same("q", q, k=k, v=v)
    V.check_positions(pos, "q", q)
    V.check_layout(pos, q.shape[:-2], mask, cu_seqlens)
    V.check_mlp_params("psi_params", psi_params, "q", q)
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    if validate and not torch.compiler.is_compiling():
        V.check_values(pos, mask, cu_seqlens)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)

    backend = resolve_backend(backend, q.device, q.dtype, dropout_p, mlp_fits_kernels(psi_params))
    if backend == "reference":
        return gtkernels_py.geometric_attention(q, k, v, pos, psi_params, mask, cu_seqlens=cu_seqlens,
                                                scale=scale, dropout_p=dropout_p)
    psi = [p.contiguous() for p in psi_params]
    if cu_seqlens is not None:
        out, _ = registry.attention_fwd(q.contiguous(), k.contiguous(), v.contiguous(), positions_as_rows(pos), psi,
                                        packed_segments(cu_seqlens), None, scale, backend)
        return out
    seg, valid = padded_segments(q.shape[0], q.shape[1], mask, q.device)
    out, _ = registry.attention_fwd(padded_to_rows(q), padded_to_rows(k), padded_to_rows(v), positions_as_rows(pos),
                                    psi, seg, valid, scale, backend)
    return out.view(q.shape)

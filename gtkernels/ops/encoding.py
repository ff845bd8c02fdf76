"""Public geometric positional-encoding op with backend dispatch (padded or packed layout)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

import gtkernels_py
from .._backends import mlp_fits_kernels, resolve_backend
from . import registry, validation as V
from .layout import packed_segments, padded_segments, padded_to_rows


def geometric_encoding(pos: Tensor, phi_params: Sequence[Tensor], mask: Optional[Tensor] = None, *,
                       cu_seqlens: Optional[Tensor] = None, backend: str = "auto", validate: bool = True) -> Tensor:
    """Fused s_i = Σ_j φ(1/r_ij) over the real atoms of i's molecule, j = i included (DESIGN.md §2).

    Args:
        pos: ``[B, N, 3]`` with optional bool ``mask [B, N]``, or ``[T, 3]`` with int32 ``cu_seqlens [B + 1]``.
        phi_params: φ weights ``[W0, b0, ..., Wn, bn]`` (``GeometricEncoding.params()``).
        backend, validate: as in :func:`gtkernels.geometric_attention`.

    Returns:
        s: ``[B, N]`` / ``[T]`` in the dtype of ``pos``; 0 for padding atoms.
    """
    V.check_tensor("pos", pos, (2, 3))
    if not pos.is_floating_point():
        raise TypeError(f"pos must be a floating tensor, got {pos.dtype}")
    if pos.shape[-1] != 3:
        raise ValueError(f"pos must end with 3 coordinates, got shape {tuple(pos.shape)}")
    V.check_layout(pos, pos.shape[:-1], mask, cu_seqlens)
    V.check_mlp_params("phi_params", phi_params, "pos", pos)
    if validate and not torch.compiler.is_compiling():
        V.check_values(pos, mask, cu_seqlens)

    backend = resolve_backend(backend, pos.device, pos.dtype, mlp_ok=mlp_fits_kernels(phi_params))
    if backend == "reference":
        return gtkernels_py.geometric_encoding(pos, phi_params, mask, cu_seqlens=cu_seqlens)
    phi = [p.contiguous() for p in phi_params]
    if cu_seqlens is not None:
        return registry.encoding_fwd(pos.contiguous(), phi, packed_segments(cu_seqlens), None, backend)
    seg, valid = padded_segments(pos.shape[0], pos.shape[1], mask, pos.device)
    return registry.encoding_fwd(padded_to_rows(pos), phi, seg, valid, backend).view(pos.shape[:2])

"""Public geometric positional-encoding op with backend dispatch (padded or packed layout)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

import gtkernels_py
from .._backends import mlp_fits_kernels, resolve_backend
from . import registry, validation as V
from .layout import packed_segments, padded_segments, positions_as_rows


def geometric_encoding(pos: Tensor, phi_params: Sequence[Tensor], mask: Optional[Tensor] = None, *,
                       cu_seqlens: Optional[Tensor] = None, backend: str = "auto", validate: bool = True) -> Tensor:
    """Fused s_i = Σ_j φ(1/r_ij) over the real atoms of i's molecule, j = i included (DESIGN.md §2).

    Args:
        pos: ``[B, N, 3]`` with optional bool ``mask [B, N]``, or ``[T, 3]`` with int32 ``cu_seqlens [B + 1]``;
            float32 or float64, whatever the dtype of φ.
        phi_params: φ weights ``[W0, b0, ..., Wn, bn]`` (``GeometricEncoding.params()``).
        backend, validate: as in :func:`gtkernels.geometric_attention`.

    Returns:
        s: ``[B, N]`` / ``[T]`` in the dtype of the φ weights; 0 for padding atoms.
    """
    V.check_tensor("pos", pos, (2, 3))
    if pos.shape[-1] != 3:
        raise ValueError(f"pos must end with 3 coordinates, got shape {tuple(pos.shape)}")
    V.check_layout(pos, pos.shape[:-1], mask, cu_seqlens)
    if not isinstance(phi_params, (list, tuple)) or not phi_params or not isinstance(phi_params[0], Tensor):
        raise TypeError("phi_params must be a list [W0, b0, ...] of tensors")
    V.check_positions(pos, "phi_params[0]", phi_params[0])
    V.check_mlp_params("phi_params", phi_params, "phi_params[0]", phi_params[0])
    if validate and not torch.compiler.is_compiling():
        V.check_values(pos, mask, cu_seqlens)

    backend = resolve_backend(backend, pos.device, phi_params[0].dtype, mlp_ok=mlp_fits_kernels(phi_params))
    if backend == "reference":
        return gtkernels_py.geometric_encoding(pos, phi_params, mask, cu_seqlens=cu_seqlens)
    phi = [p.contiguous() for p in phi_params]
    if cu_seqlens is not None:
        return registry.encoding_fwd(positions_as_rows(pos), phi, packed_segments(cu_seqlens), None, backend)
    seg, valid = padded_segments(pos.shape[0], pos.shape[1], mask, pos.device)
    return registry.encoding_fwd(positions_as_rows(pos), phi, seg, valid, backend).view(pos.shape[:2])

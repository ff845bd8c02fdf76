"""Public geometric positional-encoding op with backend dispatch (padded or packed layout)."""
from __future__ import annotations

from typing import Optional, Sequence, Union

from torch import Tensor

import gtkernels_py
from .._backends import check_precision, mlp_fits_kernels, resolve_backend
from . import registry
from .validation import check_mlp_params, check_positions
from .geometry import BatchGeometry, as_geometry


def geometric_encoding(pos: Union[Tensor, BatchGeometry], phi_params: Sequence[Tensor],
                       mask: Optional[Tensor] = None, *, cu_seqlens: Optional[Tensor] = None,
                       max_seqlen: Optional[int] = None, backend: str = "auto", precision: str = "ieee",
                       validate: bool = True) -> Tensor:
    """Fused s_i = Σ_j φ(1/r_ij) over the real atoms of i's molecule, j = i included (docs/semantics.md §2).

    Args:
        pos: ``[B, N, 3]`` with optional bool ``mask [B, N]``, or ``[T, 3]`` with int32 ``cu_seqlens [B + 1]``;
            float32 or float64, whatever the dtype of φ; or a :class:`~gtkernels.ops.geometry.BatchGeometry`.
        phi_params: φ weights ``[W0, b0, ..., Wn, bn]`` (``GeometricEncoding.params()``).
        max_seqlen, backend, precision, validate: as in :func:`gtkernels.geometric_attention`.

    Returns:
        s: ``[B, N]`` / ``[T]`` in the dtype of the φ weights; 0 for padding atoms.
    """
    if not isinstance(phi_params, (list, tuple)) or not phi_params or not isinstance(phi_params[0], Tensor):
        raise TypeError("phi_params must be a list [W0, b0, ...] of tensors")
    geom = as_geometry(pos, mask, cu_seqlens, max_seqlen, validate)
    check_positions(geom.positions, "phi_params[0]", phi_params[0])
    check_mlp_params("phi_params", phi_params, "phi_params[0]", phi_params[0])
    check_precision(precision)

    backend = resolve_backend(backend, geom.device, phi_params[0].dtype, mlp_ok=mlp_fits_kernels(phi_params))
    if backend == "reference":
        return gtkernels_py.geometric_encoding(geom.positions, phi_params, geom.mask, cu_seqlens=geom.cu_seqlens)
    phi = [p.contiguous() for p in phi_params]
    s = registry.encoding_fwd(geom.pos_rows, phi, geom.seg, geom.valid, geom.max_atoms, precision, backend)
    return s.view(geom.rows_shape)

"""Input checks shared by the fused modules."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from ..ops.geometry import BatchGeometry
from ..ops.validation import check_tensor


def check_features(x: Tensor, d_model: int, pos, cu_seqlens: Optional[Tensor]) -> None:
    """``x`` is ``[B, N, d_model]`` (padded) or ``[T, d_model]`` (packed, with cu_seqlens), matching ``pos``
    (a positions tensor or a :class:`BatchGeometry`)."""
    packed = cu_seqlens is not None or (isinstance(pos, BatchGeometry) and not pos.padded)
    check_tensor("x", x, (2,) if packed else (3,))
    if x.shape[-1] != d_model:
        raise ValueError(f"x must end with d_model = {d_model} features, got shape {tuple(x.shape)}")
    lead = pos.rows_shape if isinstance(pos, BatchGeometry) else None
    if lead is None:
        check_tensor("pos", pos)
        if tuple(pos.shape) != tuple(x.shape[:-1]) + (3,):
            raise ValueError(f"pos must have shape {tuple(x.shape[:-1]) + (3,)} to match x {tuple(x.shape)}, "
                             f"got {tuple(pos.shape)}")
    elif tuple(x.shape[:-1]) != tuple(lead):
        raise ValueError(f"x must have shape {tuple(lead) + (d_model,)} to match the batch geometry, got "
                         f"{tuple(x.shape)}")

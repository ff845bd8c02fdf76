"""Input checks shared by the fused modules."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from ..ops.validation import check_tensor


def check_features(x: Tensor, d_model: int, pos: Tensor, cu_seqlens: Optional[Tensor]) -> None:
    """``x`` is ``[B, N, d_model]`` (padded) or ``[T, d_model]`` (packed, with cu_seqlens), matching ``pos``."""
    check_tensor("x", x, (2,) if cu_seqlens is not None else (3,))
    check_tensor("pos", pos)
    if x.shape[-1] != d_model:
        raise ValueError(f"x must end with d_model = {d_model} features, got shape {tuple(x.shape)}")
    if tuple(pos.shape) != tuple(x.shape[:-1]) + (3,):
        raise ValueError(f"pos must have shape {tuple(x.shape[:-1]) + (3,)} to match x {tuple(x.shape)}, "
                         f"got {tuple(pos.shape)}")

"""Batch molecules in the padded (``[B, N_max]`` + mask) or packed (``[T]`` + ``cu_seqlens``) layout."""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
import torch
from torch import Tensor


def pad(molecules: Sequence, dtype=torch.float32) -> Tuple[Tensor, Tensor, Tensor]:
    """``(z [B, N] int64 with 0 = padding, pos [B, N, 3], mask [B, N] bool)``, N = the largest molecule."""
    n_max = max((len(m.z) for m in molecules), default=0)
    z = torch.zeros(len(molecules), n_max, dtype=torch.int64)
    pos = torch.zeros(len(molecules), n_max, 3, dtype=torch.float64)
    for b, m in enumerate(molecules):
        z[b, :len(m.z)] = torch.from_numpy(m.z.astype(np.int64))
        pos[b, :len(m.z)] = torch.from_numpy(m.pos)
    return z, pos.to(dtype), z > 0


def pack(molecules: Sequence, dtype=torch.float32) -> Tuple[Tensor, Tensor, Tensor]:
    """``(z [T] int64, pos [T, 3], cu_seqlens [B + 1] int32)``."""
    counts = torch.tensor([len(m.z) for m in molecules], dtype=torch.int64)
    cu = torch.zeros(len(molecules) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(counts, 0)
    if not molecules:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0, 3, dtype=dtype), cu
    z = torch.from_numpy(np.concatenate([m.z for m in molecules]).astype(np.int64))
    pos = torch.from_numpy(np.concatenate([m.pos for m in molecules])).to(dtype)
    return z, pos, cu

"""Conversion of the padded (``[B, N, ...]`` + mask) and packed (``[T, ...]`` + ``cu_seqlens``) layouts to the
"segments of rows" layout of the compiled kernels: rows ``[R, ...]``, int64 ``seg [B + 1]``, bool ``valid [R]``."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor


def padded_segments(batch: int, n_atoms: int, mask: Optional[Tensor], device) -> Tuple[Tensor, Optional[Tensor]]:
    """Molecule b of a padded batch owns rows ``b*N .. b*N + N - 1``; padding rows are marked invalid."""
    seg = torch.arange(0, batch * n_atoms + 1, max(n_atoms, 1), device=device, dtype=torch.int64)
    if n_atoms == 0:
        seg = torch.zeros(batch + 1, device=device, dtype=torch.int64)
    valid = None if mask is None else mask.reshape(-1).contiguous()
    return seg, valid


def packed_segments(cu_seqlens: Tensor) -> Tensor:
    """``cu_seqlens`` (int32 or int64) as the int64 row boundaries the kernels take."""
    return cu_seqlens.to(torch.int64).contiguous()


def padded_to_rows(x: Tensor) -> Tensor:
    """``[B, N, ...]`` → contiguous ``[B*N, ...]``."""
    return x.reshape((-1,) + tuple(x.shape[2:])).contiguous()


def packed_to_padded_index(cu_seqlens: Tensor) -> Tuple[Tensor, Tensor, int]:
    """For each packed row, its molecule and slot: ``(molecule [T], slot [T], max_atoms)``."""
    counts = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    total = int(cu_seqlens[-1])
    molecule = torch.repeat_interleave(torch.arange(counts.numel(), device=cu_seqlens.device), counts,
                                       output_size=total)
    slot = torch.arange(total, device=cu_seqlens.device) - cu_seqlens.long()[molecule]
    return molecule, slot, int(counts.max()) if counts.numel() else 0

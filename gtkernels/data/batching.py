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


# ------------------------------------------------------------------ PyG-style batch vectors, bucketing, overhead
def batch_vector(cu_seqlens: Tensor) -> Tensor:
    """PyG-style ``batch [T]`` int64 (molecule id of each atom) from ``cu_seqlens [B+1]``."""
    counts = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    return torch.repeat_interleave(torch.arange(counts.numel(), device=cu_seqlens.device), counts)


def cu_seqlens_from_batch(batch: Tensor, num_molecules: int | None = None) -> Tensor:
    """``cu_seqlens [B+1]`` int32 from a sorted PyG-style ``batch [T]`` vector (atoms of a molecule contiguous)."""
    if batch.numel() and bool((batch[1:] < batch[:-1]).any()):
        raise ValueError("batch must be sorted (the atoms of each molecule contiguous), as PyG produces it")
    b = int(batch.max()) + 1 if num_molecules is None and batch.numel() else (num_molecules or 0)
    counts = torch.bincount(batch.long(), minlength=b)
    cu = torch.zeros(b + 1, dtype=torch.int32, device=batch.device)
    cu[1:] = torch.cumsum(counts, 0)
    return cu


def make_batches(sizes: np.ndarray, batch_size: int, rng: np.random.Generator | None = None,
                 bucket: bool = False, bucket_factor: int = 64, drop_last: bool = False):
    """Split ``range(len(sizes))`` into batches (lists of indices), shuffled when ``rng`` is given.

    ``bucket=True`` sorts each chunk of ``batch_size × bucket_factor`` shuffled molecules by size before
    cutting batches (so a batch holds molecules of similar size, cutting padding), then shuffles batch order.
    """
    n = len(sizes)
    order = rng.permutation(n) if rng is not None else np.arange(n)
    if bucket:
        chunk = batch_size * bucket_factor
        order = np.concatenate([c[np.argsort(sizes[c], kind="stable")] for c in np.split(order, range(chunk, n, chunk))]
                               ) if n else order
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    if bucket and rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def padding_overhead(sizes: np.ndarray, batches) -> dict:
    """Wasted work of each layout for these batches, as fractions of the real work.

    ``padded_atoms`` / ``padded_pairs``: extra atom slots / extra N×N pair slots of the padded layout
    (B·N_max vs Σn, B·N_max² vs Σn²); the packed layout wastes none (``packed`` = 0).
    """
    real_a = real_p = pad_a = pad_p = 0
    for b in batches:
        s = np.asarray(sizes)[b].astype(np.int64)
        if not len(s):
            continue
        real_a += s.sum()
        real_p += (s * s).sum()
        pad_a += len(s) * s.max()
        pad_p += len(s) * s.max() ** 2
    return {"padded_atoms": pad_a / max(real_a, 1) - 1.0, "padded_pairs": pad_p / max(real_p, 1) - 1.0, "packed": 0.0}


def packed_to_padded(z: Tensor, pos: Tensor, cu_seqlens: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Packed ``(z [T], pos [T, 3], cu_seqlens)`` → padded ``(z [B, N], pos [B, N, 3], mask [B, N])``.

    ``z`` may carry trailing dimensions (R-MAT's node features ``[T, 37]`` → ``[B, N, 37]``); ``mask`` marks the
    rows that hold an atom."""
    counts = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    b, n = counts.numel(), int(counts.max()) if counts.numel() else 0
    mol = torch.repeat_interleave(torch.arange(b, device=z.device), counts, output_size=z.shape[0])
    slot = torch.arange(z.shape[0], device=z.device) - cu_seqlens[:-1].long()[mol]
    zp = z.new_zeros((b, n) + tuple(z.shape[1:]))
    pp = pos.new_zeros(b, n, 3)
    zp[mol, slot] = z
    pp[mol, slot] = pos
    mask = torch.arange(n, device=z.device)[None, :] < counts[:, None]
    return zp, pp, mask

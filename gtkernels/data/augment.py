"""The paper's training augmentation (docs/semantics.md §2): merge far-apart pairs of molecules, sum their targets.

In a shuffled batch of B molecules, sample i < B//2 becomes molecule i merged with molecule B//2 + i translated
by ``shift`` = (1e4, 1e4, 1e4) Å, with target y_i + y_{B//2+i}; samples B//2 … B−1 stay single molecules.
Positions are built in float64: a float32 coordinate near 1e4 Å only resolves ~1e-3 Å. Cache positions are
multiples of 2⁻³² Å, so adding an integer shift in float64 is exact and intra-molecule distances of a merged
sample are bit-identical to those of the molecule alone.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

SHIFT = 1e4


def merge_pairs(z: np.ndarray, pos: np.ndarray, cu_seqlens: np.ndarray, y: np.ndarray,
                shift: float = SHIFT) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Packed batch ``(z [T], pos [T, 3], cu_seqlens [B+1], y [B])`` → augmented packed batch (same B).

    Returns float64 positions; ``y`` is summed for the merged samples (so only use it for extensive targets
    when physical consistency matters; see ``--augment-extensive-only`` in the trainer).
    """
    cu = np.asarray(cu_seqlens, dtype=np.int64)
    b = len(cu) - 1
    h = b // 2
    pos = np.asarray(pos, dtype=np.float64)
    idx, shifted, counts = [], [], []
    for i in range(b):
        a = np.arange(cu[i], cu[i + 1])
        if i < h:
            c = np.arange(cu[h + i], cu[h + i + 1])
            idx += [a, c]
            shifted += [np.zeros(len(a), bool), np.ones(len(c), bool)]
            counts.append(len(a) + len(c))
        else:
            idx.append(a)
            shifted.append(np.zeros(len(a), bool))
            counts.append(len(a))
    order = np.concatenate(idx) if idx else np.zeros(0, np.int64)
    sh = np.concatenate(shifted) if shifted else np.zeros(0, bool)
    new_pos = pos[order].copy()
    new_pos[sh] += shift
    new_cu = np.zeros(b + 1, np.int64)
    new_cu[1:] = np.cumsum(counts)
    y = np.asarray(y, dtype=np.float64)
    new_y = y.copy()
    new_y[:h] = y[:h] + y[h:2 * h]
    return np.asarray(z)[order], new_pos, new_cu, new_y

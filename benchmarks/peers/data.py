"""The molecules every peer case sees: real QM9, one fixed random draw, residual U0 targets (meV).

- :func:`throughput_draw`: 1,024 molecules of QM9 (``np.random.default_rng(0)``), the throughput table's input;
- :func:`training_sets`: the training subset (a fixed draw of the standard 110k training split,
  :func:`gtkernels.data.train_subset`, what ``gtkernels train --train-subset N`` trains on) and the first ``n_val``
  molecules of the standard validation split (``make_split(seed=0)``, what ``--max-val`` keeps).
"""
from __future__ import annotations

import functools
from typing import Tuple

import numpy as np

DRAW = 1024
DRAW_SEED = 0


@functools.lru_cache(maxsize=1)
def batcher():
    """The QM9 cache (built from qm9pack's CSV on first use) behind :class:`gtkernels.train.Batcher` for U0."""
    from gtkernels.data.qm9 import QM9
    from gtkernels.train import Batcher
    return Batcher(QM9(progress=False), "U0")


def throughput_draw(n: int = DRAW) -> np.ndarray:
    """Sorted indices (int64 ``[n]``) of the fixed random draw of QM9 molecules the throughput cases use."""
    b = batcher()
    return np.sort(np.random.default_rng(DRAW_SEED).choice(len(b.ds), size=n, replace=False))


def training_sets(n_train: int = 20_000, n_val: int = 2_000, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """``(train, val)`` index arrays: the ``--train-subset n_train`` draw and the first ``n_val`` of validation."""
    from gtkernels.data.qm9 import make_split, train_subset
    split = make_split(len(batcher().ds), seed=seed)
    return train_subset(split["train"], n_train, seed=seed), split["val"][:n_val]


def per_atom_stats(idx: np.ndarray) -> Tuple[float, float]:
    """Per-atom mean and std (meV) of the residual targets of molecules ``idx`` (our model's μ, σ)."""
    from gtkernels.train import norm_stats
    return norm_stats(batcher(), idx)


def packed(idx: np.ndarray, augment: bool = False):
    """``(z uint8 [T], pos float64 [T, 3], cu int64 [B+1], y float64 [B] meV)`` of molecules ``idx``;
    ``augment``: the Geometric Transformer's pair merging (our training recipe)."""
    from gtkernels.data.augment import merge_pairs
    z, pos, cu, y = batcher().gather(np.asarray(idx))
    if augment:
        z, pos, cu, y = merge_pairs(z, pos, cu, y)
    return z, pos, cu, y

"""Shared test data: random and real molecules, attention inputs in both layouts, random MLP weights."""
from __future__ import annotations

import functools
from typing import List, Sequence

import numpy as np
import torch

from gtkernels.data import Molecule, load_molecules, pack, pad


def random_molecule(n: int, rng: np.random.Generator, min_dist: float = 0.9) -> Molecule:
    """``n`` atoms in a box sized for ~1 atom/Å³·0.1, at least ``min_dist`` Å apart; Z from H, C, N, O, F."""
    side = max(1.5, (10.0 * n) ** (1 / 3))
    pts: List[np.ndarray] = []
    while len(pts) < n:
        p = rng.uniform(-side, side, 3)
        if all(np.linalg.norm(p - q) >= min_dist for q in pts):
            pts.append(p)
    z = rng.choice(np.array([1, 6, 7, 8, 9], dtype=np.uint8), size=n)
    return Molecule(-1, z, np.array(pts).reshape(n, 3))


def random_molecules(sizes: Sequence[int], seed: int = 0) -> List[Molecule]:
    rng = np.random.default_rng(seed)
    return [random_molecule(n, rng) for n in sizes]


@functools.lru_cache(maxsize=1)
def _qm9_head() -> List[Molecule]:
    return load_molecules(400)


def qm9_molecules(count: int, seed: int = 0) -> List[Molecule]:
    """``count`` real QM9 molecules, the largest of the first 400 first (so up to 20+ atoms), then random."""
    mols = sorted(_qm9_head(), key=lambda m: -len(m.z))
    rng = np.random.default_rng(seed)
    picked = mols[:count // 2] + [mols[i] for i in rng.choice(len(mols), count - count // 2, replace=False)]
    return picked


def mlp_params(widths: Sequence[int], dtype=torch.float64, seed: int = 0, gain: float = 1.0) -> List[torch.Tensor]:
    """Random ``[W0, b0, ...]`` for an MLP of layer widths ``1 → widths... → 1``, leaf tensors needing grad."""
    g = torch.Generator().manual_seed(seed)
    dims = [1, *widths, 1]
    out = []
    for a, b in zip(dims[:-1], dims[1:]):
        w = torch.randn(b, a, generator=g, dtype=torch.float64) * gain / max(a, 1) ** 0.5
        bias = torch.randn(b, generator=g, dtype=torch.float64) * 0.3
        out += [w.to(dtype).requires_grad_(), bias.to(dtype).requires_grad_()]
    return out


def attention_inputs(mols: Sequence[Molecule], heads: int, d: int, dtype=torch.float64, layout: str = "padded",
                     seed: int = 0):
    """``(q, k, v, pos, mask_or_None, cu_seqlens_or_None)`` for ``mols``; q, k, v, pos require grad.

    Padded and packed inputs of the same ``seed`` hold the same values for each real atom.
    """
    z, pos, mask = pad(mols, torch.float64)
    g = torch.Generator().manual_seed(seed)
    shape = tuple(z.shape) + (heads, d)
    q, k, v = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3))
    if layout == "padded":
        tensors = [t.to(dtype).requires_grad_() for t in (q, k, v, pos)]
        return (*tensors, mask, None)
    _, _, cu = pack(mols)
    tensors = [t[mask].to(dtype).requires_grad_() for t in (q, k, v, pos)]
    return (*tensors, None, cu)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| / max(max |b|, 1e-30)."""
    a, b = a.detach(), b.detach()
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)) if b.numel() else 0.0

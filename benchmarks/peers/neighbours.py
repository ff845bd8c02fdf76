"""Neighbour lists of packed molecule batches, in plain numpy / torch (no torch-cluster, no pyg-lib).

A packed batch holds ``T`` atoms of ``B`` molecules, molecule ``m`` in rows ``cu[m]:cu[m+1]`` (``cu`` int64
``[B+1]``). The pairs are every ordered pair ``(i, j)``, ``i != j``, of atoms of one molecule closer than the
cutoff: what a radius graph without a neighbour cap gives for molecules of at most 29 atoms (QM9), where
``max_num_neighbors`` (32 in PyG, 64 in ET-QM9.yaml) never binds.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch


def _candidates(counts: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """All ordered same-molecule atom pairs ``(i, j)`` (int64 ``[P]`` each) of molecules with ``counts`` atoms."""
    starts = torch.cumsum(counts, 0) - counts
    per_atom = torch.repeat_interleave(counts, counts)          # atoms of the molecule of each atom, [T]
    first = torch.repeat_interleave(starts, counts)             # first atom of that molecule, [T]
    i = torch.repeat_interleave(torch.arange(len(per_atom), device=counts.device), per_atom)
    offset = torch.arange(len(i), device=counts.device) - torch.repeat_interleave(
        torch.cumsum(per_atom, 0) - per_atom, per_atom)
    j = torch.repeat_interleave(first, per_atom) + offset
    keep = i != j
    return i[keep], j[keep]


def radius_pairs(pos: torch.Tensor, counts: torch.Tensor, cutoff: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(i, j)`` int64 ``[P]``: same-molecule ordered pairs with ``|pos[j] − pos[i]| < cutoff``.

    pos: ``[T, 3]`` float; counts: int64 ``[B]`` atoms per molecule (packed in this order).
    """
    i, j = _candidates(counts.to(torch.int64))
    with torch.no_grad():
        close = (pos[j] - pos[i]).norm(dim=-1) < cutoff
    return i[close], j[close]


def radius_pairs_numpy(pos: np.ndarray, cu: np.ndarray, cutoff: float) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`radius_pairs` on numpy arrays (``cu`` int64 ``[B+1]``), for pipelines that build lists once."""
    i, j = radius_pairs(torch.from_numpy(np.asarray(pos, np.float64)), torch.from_numpy(np.diff(cu)), cutoff)
    return i.numpy(), j.numpy()


def batch_vector(counts: torch.Tensor) -> torch.Tensor:
    """Molecule index of every atom, int64 ``[T]`` (PyG's ``batch``, SchNetPack's ``_idx_m``)."""
    return torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)


def radius_graph(pos: torch.Tensor, r: float, batch: torch.Tensor, max_num_neighbors: int = 32,
                 **_ignored) -> torch.Tensor:
    """Stand-in for ``torch_geometric.nn.radius_graph`` (torch-cluster is not installed): ``edge_index`` int64
    ``[2, P]`` as PyG orders it, row 0 the source ``j`` and row 1 the target ``i``. ``batch`` must be sorted."""
    counts = torch.bincount(batch)
    i, j = radius_pairs(pos, counts, r)
    return torch.stack([j, i])


def triplets(edge_index: torch.Tensor, num_nodes: int):
    """Stand-in for ``torch_geometric.nn.models.dimenet.triplets`` (it needs torch-sparse): for every edge
    ``j → i`` every edge ``k → j`` with ``k != i``. Returns ``(i, j, idx_i, idx_j, idx_k, idx_kj, idx_ji)`` as
    the original does (the triplets in another order, which the sums over them do not see)."""
    row, col = edge_index                                   # j → i
    order = torch.argsort(col, stable=True)                 # edges grouped by their target
    indeg = torch.bincount(col, minlength=num_nodes)
    ptr = torch.cumsum(indeg, 0) - indeg
    n_in = indeg[row]                                       # edges k → j into the source j of each edge
    idx_ji = torch.repeat_interleave(torch.arange(len(row), device=row.device), n_in)
    within = torch.arange(len(idx_ji), device=row.device) - torch.repeat_interleave(torch.cumsum(n_in, 0) - n_in,
                                                                                    n_in)
    idx_kj = order[ptr[row][idx_ji] + within]
    idx_i, idx_j, idx_k = col[idx_ji], row[idx_ji], row[idx_kj]
    keep = idx_i != idx_k
    idx_i, idx_j, idx_k, idx_kj, idx_ji = idx_i[keep], idx_j[keep], idx_k[keep], idx_kj[keep], idx_ji[keep]
    return col, row, idx_i, idx_j, idx_k, idx_kj, idx_ji

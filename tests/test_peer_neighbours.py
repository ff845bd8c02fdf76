"""The plain-torch neighbour lists the peer benchmarks give PyG's SchNet and DimeNet++ (no torch-cluster there)."""
import itertools

import torch

from benchmarks.peers.neighbours import radius_graph, radius_pairs, triplets


def _molecules(seed=0):
    g = torch.Generator().manual_seed(seed)
    counts = torch.tensor([1, 4, 7, 3])
    return torch.rand(int(counts.sum()), 3, generator=g, dtype=torch.float64) * 4, counts


def test_radius_pairs_are_every_close_same_molecule_pair():
    pos, counts = _molecules()
    cu = [0] + torch.cumsum(counts, 0).tolist()
    want = {(i, j) for a, b in zip(cu, cu[1:]) for i, j in itertools.permutations(range(a, b), 2)
            if float((pos[i] - pos[j]).norm()) < 3.0}
    i, j = radius_pairs(pos, counts, 3.0)
    got = list(zip(i.tolist(), j.tolist()))
    assert len(got) == len(set(got)) and set(got) == want and want   # no duplicates, nothing missed


def test_triplets_match_their_definition():
    pos, counts = _molecules(1)
    batch = torch.repeat_interleave(torch.arange(len(counts)), counts)
    edge_index = radius_graph(pos, 3.0, batch)
    src, dst = edge_index.tolist()
    edges = list(zip(src, dst))                               # j → i
    want = {(k, j, i, edges.index((k, j)), e) for e, (j, i) in enumerate(edges)
            for k in range(len(pos)) if (k, j) in edges and k != i}
    col, row, idx_i, idx_j, idx_k, idx_kj, idx_ji = triplets(edge_index, len(pos))
    assert col.tolist() == dst and row.tolist() == src
    got = list(zip(idx_k.tolist(), idx_j.tolist(), idx_i.tolist(), idx_kj.tolist(), idx_ji.tolist()))
    assert len(got) == len(set(got)) and set(got) == want and want

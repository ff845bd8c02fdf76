"""gtkernels_py (the spec) against an explicit per-pair float64 loop, and its invariances."""
import math

import pytest
import torch

import gtkernels_py
from helpers import attention_inputs, mlp_params, qm9_molecules, random_molecules


def _mlp_scalar(x: float, params, hidden, out=None) -> float:
    """One MLP evaluation on a Python float, written out layer by layer."""
    h = [x]
    n = len(params) // 2
    for layer in range(n):
        w, b = params[2 * layer].tolist(), params[2 * layer + 1].tolist()
        h = [sum(wr[c] * h[c] for c in range(len(h))) + br for wr, br in zip(w, b)]
        if layer < n - 1:
            h = [hidden(a) for a in h]
        elif out is not None:
            h = [out(a) for a in h]
    return h[0]


def _relu(a):
    return max(a, 0.0)


def _gelu(a):
    return 0.5 * a * (1.0 + math.erf(a / math.sqrt(2.0)))


def loop_attention(q, k, v, pos, psi, mask):
    """O[b, i, h] = Σ_{j real, j≠i} softmax_j(q·k/√d) · ψ(1/(r_ij + 1e-16))² · v_j, written as loops."""
    B, N, H, D = q.shape
    out = torch.zeros_like(q, dtype=torch.float64)
    for b in range(B):
        for i in range(N):
            if not mask[b, i]:
                continue
            keys = [j for j in range(N) if j != i and mask[b, j]]
            for h in range(H):
                if not keys:
                    continue
                s = [float(q[b, i, h] @ k[b, j, h]) / math.sqrt(D) for j in keys]
                m = max(s)
                e = [math.exp(x - m) for x in s]
                for j, ej in zip(keys, e):
                    r = math.dist(pos[b, i].tolist(), pos[b, j].tolist())
                    g = _mlp_scalar(1.0 / (r + 1e-16), psi, _relu) ** 2
                    out[b, i, h] += (ej / sum(e)) * g * v[b, j, h].double()
    return out


def loop_encoding(pos, phi, mask):
    B, N, _ = pos.shape
    s = torch.zeros(B, N, dtype=torch.float64)
    for b in range(B):
        for i in range(N):
            if mask[b, i]:
                for j in range(N):
                    if mask[b, j]:
                        rinv = 0.0 if i == j else 1.0 / (math.dist(pos[b, i].tolist(), pos[b, j].tolist()) + 1e-16)
                        s[b, i] += _mlp_scalar(rinv, phi, _gelu, _gelu)
    return s


def _with_holes(mask):
    """A slot permutation that scatters each molecule's real atoms: padding not only at the end."""
    return torch.randperm(mask.shape[1], generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("source", ["random", "qm9"])
def test_attention_matches_loop(source):
    mols = random_molecules([1, 5, 7, 2]) if source == "random" else qm9_molecules(3)
    q, k, v, pos, mask, _ = attention_inputs(mols, heads=2, d=3)
    psi = mlp_params([6, 6, 6], seed=1)
    with torch.no_grad():
        # padding not only at the end: scatter the atom slots with one permutation
        perm = _with_holes(mask)
        q, k, v, pos, mask = q[:, perm], k[:, perm], v[:, perm], pos[:, perm], mask[:, perm]
        got = gtkernels_py.geometric_attention(q, k, v, pos, psi, mask)
        want = loop_attention(q, k, v, pos, psi, mask)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_encoding_matches_loop():
    mols = random_molecules([1, 4, 6]) + qm9_molecules(1)
    _, _, _, pos, mask, _ = attention_inputs(mols, heads=1, d=1)
    phi = mlp_params([5], seed=2)
    with torch.no_grad():
        torch.testing.assert_close(gtkernels_py.geometric_encoding(pos, phi, mask), loop_encoding(pos, phi, mask),
                                   rtol=1e-12, atol=1e-12)


def test_gate_is_not_renormalised_and_self_excluded():
    """With a constant gate c the output is exactly c × plain softmax attention over j ≠ i."""
    mols = random_molecules([6])
    q, k, v, pos, mask, _ = attention_inputs(mols, heads=2, d=4)
    c = 0.37
    psi = [torch.zeros(3, 1, dtype=torch.float64), torch.zeros(3, dtype=torch.float64),
           torch.zeros(1, 3, dtype=torch.float64), torch.full((1,), c, dtype=torch.float64)]  # ψ ≡ c
    with torch.no_grad():
        got = gtkernels_py.geometric_attention(q, k, v, pos, psi, mask)
        scores = torch.einsum("bihd,bjhd->bhij", q, k) / 2.0
        scores = scores.masked_fill(torch.eye(6, dtype=torch.bool), float("-inf"))
        plain = torch.einsum("bhij,bjhd->bihd", scores.softmax(-1), v)
    torch.testing.assert_close(got, c * c * plain)
    # A row's gated weights do not sum to 1: ψ² scales the output, the softmax does not undo it.
    assert not torch.allclose(got, plain)


def test_padding_and_lonely_atoms_give_zero_not_nan():
    mols = random_molecules([1, 3, 5])
    q, k, v, pos, mask, _ = attention_inputs(mols, heads=2, d=2)
    psi = mlp_params([4], seed=0)
    out = gtkernels_py.geometric_attention(q, k, v, pos, psi, mask)
    assert torch.isfinite(out).all()
    assert (out[0] == 0).all()            # one-atom molecule and its padding
    assert (out[1, 3:] == 0).all()        # padding rows of a 3-atom molecule
    assert (out[2] != 0).any()
    out.sum().backward()
    for t in (q, k, v, pos, *psi):
        assert torch.isfinite(t.grad).all()


def _rotation(seed):
    g = torch.Generator().manual_seed(seed)
    qmat, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    return qmat


def test_model_invariances():
    torch.manual_seed(0)
    model = gtkernels_py.GeometricTransformer(num_layers=2, d_model=16, num_heads=4, psi_hidden=8).double()
    mols = qm9_molecules(3)
    from gtkernels.data import pad
    z, pos, mask = pad(mols, torch.float64)
    base = model(z, pos)
    # rotation + translation of every molecule
    moved = pos @ _rotation(1).T + torch.tensor([3.0, -2.0, 7.5], dtype=torch.float64)
    torch.testing.assert_close(model(z, moved), base)
    # permutation of the atom slots (padding moves too)
    perm = torch.randperm(z.shape[1], generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model(z[:, perm], pos[:, perm]), base)
    # extra padding slots
    z2 = torch.cat([z, torch.zeros(z.shape[0], 4, dtype=z.dtype)], 1)
    pos2 = torch.cat([pos, torch.randn(z.shape[0], 4, 3, dtype=pos.dtype) * 50], 1)
    torch.testing.assert_close(model(z2, pos2), base)


def test_attention_equivariance_to_permutation():
    mols = random_molecules([7])
    q, k, v, pos, mask, _ = attention_inputs(mols, heads=3, d=2)
    psi = mlp_params([5, 5], seed=4)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = gtkernels_py.geometric_attention(q, k, v, pos, psi, mask)
        out_p = gtkernels_py.geometric_attention(q[:, perm], k[:, perm], v[:, perm], pos[:, perm], psi, mask[:, perm])
    torch.testing.assert_close(out_p, out[:, perm])


def test_packed_equals_padded_reference():
    mols = random_molecules([3, 1, 6, 4])
    q, k, v, pos, mask, _ = attention_inputs(mols, heads=2, d=3, layout="padded")
    qp, kp, vp, posp, _, cu = attention_inputs(mols, heads=2, d=3, layout="packed")
    psi = mlp_params([5], seed=0)
    with torch.no_grad():
        torch.testing.assert_close(gtkernels_py.geometric_attention(qp, kp, vp, posp, psi, cu_seqlens=cu),
                                   gtkernels_py.geometric_attention(q, k, v, pos, psi, mask)[mask])


def test_model_packed_equals_padded():
    torch.manual_seed(1)
    model = gtkernels_py.GeometricTransformer(num_layers=2, d_model=16, num_heads=2, psi_hidden=8, mean=0.3, std=2.0,
                                   atomref=torch.linspace(-1, 1, 50)).double()
    from gtkernels.data import pack, pad
    mols = random_molecules([5, 1, 8]) + qm9_molecules(2)
    z, pos, mask = pad(mols, torch.float64)
    zp, posp, cu = pack(mols, torch.float64)
    torch.testing.assert_close(model(zp, posp, cu_seqlens=cu), model(z, pos, mask))

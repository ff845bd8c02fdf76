"""The R-MAT relative-attention spec (gtkernels_py.relative_attention) against three independent forms:
a per-pair float64 loop, a transcription of the released huggingmolecules code's maths in its own layout and
state-dict names, and the associative (fused) evaluation of the logits and values."""
import math

import pytest
import torch
import torch.nn.functional as F

from gtkernels_py import (MultiHeadRelativeAttention, distance_basis, hop_counts, hop_one_hot, relation_features,
                          relative_attention)

DT = torch.float64
TIGHT = dict(rtol=1e-12, atol=1e-12)


def _randn(*shape, gen, scale=1.0):
    return (torch.randn(*shape, generator=gen, dtype=DT) * scale)


def _phi_params(c, hidden, out, gen):
    return [_randn(hidden, c, gen=gen, scale=c ** -0.5), _randn(hidden, gen=gen, scale=0.3),
            _randn(out, hidden, gen=gen, scale=hidden ** -0.5), _randn(out, gen=gen, scale=0.3)]


def _inputs(B=2, N=5, H=2, d_k=3, C=7, hidden=4, seed=0, lengths=(5, 3)):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (_randn(B, N, H, d_k, gen=gen) for _ in range(3))
    relation = _randn(B, N, N, C, gen=gen)
    mask = torch.arange(N)[None, :] < torch.tensor(lengths)[:, None]
    phi_k = _phi_params(C, hidden, H * d_k, gen)
    phi_v = _phi_params(C, hidden, H * d_k, gen)
    u, v_rel = _randn(H, d_k, gen=gen), _randn(H, d_k, gen=gen)
    return q, k, v, relation, mask, phi_k, phi_v, u, v_rel


# ---------------------------------------------------------------- per-pair loop

def _leaky(a):
    return a if a > 0 else 0.1 * a


def _phi_scalar(b, params, out_index):
    """Entry ``out_index`` of W2·LeakyReLU(W1 b + c1) + c2 on Python floats."""
    w1, c1, w2, c2 = (t.tolist() for t in params)
    hid = [_leaky(sum(w1[m][c] * b[c] for c in range(len(b))) + c1[m]) for m in range(len(c1))]
    return sum(w2[out_index][m] * hid[m] for m in range(len(hid))) + c2[out_index]


def loop_relative_attention(q, k, v, relation, mask, phi_k, phi_v, u, v_rel):
    """z[b, i, h] = Σ_j α_ij (v_j + rⱽ_ij) with the released logits, one pair and one channel at a time."""
    B, N, H, D = q.shape
    out = torch.zeros(B, N, H, D, dtype=DT)
    for b in range(B):
        for i in range(N):
            if not mask[b, i]:
                continue
            for h in range(H):
                keys = [j for j in range(N) if mask[b, j]]
                logits, r_v = [], []
                for j in keys:
                    rel = relation[b, i, j].tolist()
                    r_k = [_phi_scalar(rel, phi_k, h * D + d) for d in range(D)]
                    r_v.append([_phi_scalar(rel, phi_v, h * D + d) for d in range(D)])
                    e = sum(q[b, i, h, d].item() * k[b, j, h, d].item() for d in range(D))
                    e += sum((q[b, i, h, d].item() + k[b, i, h, d].item()) * r_k[d] for d in range(D))
                    e /= math.sqrt(D)
                    e += sum(k[b, i, h, d].item() * u[h, d].item() for d in range(D))
                    e += sum(r_k[d] * v_rel[h, d].item() for d in range(D))
                    logits.append(e)
                top = max(logits)
                weights = [math.exp(e - top) for e in logits]
                total = sum(weights)
                for d in range(D):
                    out[b, i, h, d] = sum(w / total * (v[b, j, h, d].item() + r_v[n][d])
                                          for n, (j, w) in enumerate(zip(keys, weights)))
    return out


def test_spec_matches_per_pair_loop():
    q, k, v, relation, mask, phi_k, phi_v, u, v_rel = _inputs()
    got = relative_attention(q, k, v, relation, phi_k, phi_v, mask, u=u, v_rel=v_rel)
    want = loop_relative_attention(q, k, v, relation, mask, phi_k, phi_v, u, v_rel)
    torch.testing.assert_close(got, want, **TIGHT)


# ---------------------------------------------------------------- released code, transcribed

def released_bessel(dist, num_radial=32, cutoff=20.0, exponent=5.0):
    """huggingmolecules BesselBasisLayerEnvelope: [B, N, N] → [B, num_radial, N, N] (nπ rounded to float32)."""
    x = (dist[..., None] + 1e-6) / cutoff
    p = exponent + 1
    env = 1 / x - (p + 1) * (p + 2) / 2 * x ** (p - 1) + p * (p + 2) * x ** p - p * (p + 1) / 2 * x ** (p + 1)
    env = torch.where(x < 1, env, torch.zeros_like(x))
    freq = math.pi * torch.arange(1, num_radial + 1).float()
    return (env * torch.sin(freq * x)).permute(0, 3, 1, 2)


def released_relational(order, max_order=4, inf=999.0):
    """huggingmolecules get_relational_array for one molecule: [N, N] hop counts (999 = no path) → [6, N, N]."""
    out = torch.zeros(max_order + 2, *order.shape, dtype=DT)
    for i in range(max_order):
        out[i][order == i] = 1
    out[max_order][(order >= max_order) & (order < inf)] = 1
    out[max_order + 1][order == inf] = 1
    return out


def released_self_attention(sd, x, edges_att, batch_mask, h):
    """huggingmolecules MultiHeadedAttention(RMatAttention) at eval, in its layout: x [B, N, d_model],
    edges_att [B, C, N, N] channel-first, batch_mask [B, N]; ``sd`` holds its state-dict names."""
    B, N, d_model = x.shape
    d_k = d_model // h

    def heads(i):
        return F.linear(x, sd[f"linear_layers.{i}.weight"], sd[f"linear_layers.{i}.bias"]) \
            .view(B, N, h, d_k).transpose(1, 2)                                     # [B, h, N, d_k]

    def edge_layer(name):
        e = edges_att.permute(0, 2, 3, 1)
        hid = F.leaky_relu(F.linear(e, sd[f"attention.{name}.nn.0.weight"], sd[f"attention.{name}.nn.0.bias"]), 0.1)
        out = F.linear(hid, sd[f"attention.{name}.nn.3.weight"], sd[f"attention.{name}.nn.3.bias"])
        return out.permute(0, 3, 1, 2).reshape(B, h, d_k, N, N)                       # [B, h, d_k, N, N]

    query, key, value = heads(0), heads(1), heads(2)
    rel_k, rel_v = edge_layer("relative_K"), edge_layer("relative_V")
    rel_u, rel_v_bias = sd["attention.relative_u"], sd["attention.relative_v"]       # [1,h,1,d_k], [1,h,1,d_k,1]
    s1 = query @ key.transpose(-2, -1) / math.sqrt(d_k)
    s2 = torch.einsum("bhid,bhdij->bhij", query + key, rel_k) / math.sqrt(d_k)
    s3 = key @ rel_u.transpose(-2, -1)                                               # [B, h, N, 1]: row i
    s4 = torch.einsum("bhdij,hd->bhij", rel_k, rel_v_bias[0, :, 0, :, 0])
    scores = s1 + s2 + s3 + s4
    keys = batch_mask[:, None, None, :].expand(B, h, N, N)
    p = torch.softmax(scores.masked_fill(keys == 0, -1e12), dim=-1)
    z = p @ value + torch.einsum("bhij,bhdij->bhid", p, rel_v)
    z = z.transpose(1, 2).reshape(B, N, d_model)
    return F.linear(z, sd["output_linear.weight"], sd["output_linear.bias"])


def _floyd_warshall(adj):
    """Released featuriser's hop matrix of one molecule (its ``adj`` has 1 on real atoms' diagonals)."""
    n = len(adj)
    d = [[999.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            if adj[i][j] == 1:
                d[i][j] = 1.0
        d[i][i] = 0.0
    for m in range(n):
        for i in range(n):
            for j in range(n):
                d[i][j] = min(d[i][j], d[i][m] + d[m][j])
    return torch.tensor(d, dtype=DT)


def _molecules():
    """Two featurised molecules as the released featuriser lays them out, dummy node first:
    a 6-atom chain (hop counts up to 5) and a separate 1-atom fragment (7 atoms + dummy), and a 2-atom molecule."""
    gen = torch.Generator().manual_seed(3)
    out = []
    for n_atoms, bonds in ((7, [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]), (2, [(0, 1)])):
        n = n_atoms + 1
        adj = torch.zeros(n, n, dtype=DT)
        adj[1:, 1:] = torch.eye(n_atoms, dtype=DT)
        bond = torch.zeros(8, n, n, dtype=DT)
        for a, b in bonds:
            adj[a + 1, b + 1] = adj[b + 1, a + 1] = 1
            feats = torch.zeros(8, dtype=DT)
            feats[1 + int(torch.randint(4, (1,), generator=gen))] = 1
            feats[5:] = torch.randint(2, (3,), generator=gen).to(DT)
            bond[:, a + 1, b + 1] = bond[:, b + 1, a + 1] = feats
        pos = _randn(n_atoms, 3, gen=gen, scale=3.0)
        dist = torch.full((n, n), 1e6, dtype=DT)
        dist[1:, 1:] = torch.cdist(pos, pos)
        out.append((bond, _floyd_warshall(adj.tolist()), dist))
    return out


def _released_batch():
    """The released collate: zero-padded [B, 8|6, N, N] bond and hop channels, [B, N, N] distances."""
    mols = _molecules()
    N = max(m[2].shape[0] for m in mols)
    B = len(mols)
    bond, rel = torch.zeros(B, 8, N, N, dtype=DT), torch.zeros(B, 6, N, N, dtype=DT)
    dist = torch.zeros(B, N, N, dtype=DT)
    mask = torch.zeros(B, N, dtype=torch.bool)
    hops = torch.zeros(B, N, N, dtype=torch.int64)
    for b, (bd, order, d) in enumerate(mols):
        n = d.shape[0]
        bond[b, :, :n, :n], rel[b, :, :n, :n], dist[b, :n, :n] = bd, released_relational(order), d
        hops[b, :n, :n] = torch.where(order == 999.0, -1, order).long()
        mask[b, :n] = True
    return bond, rel, dist, mask, hops


def test_relation_features_match_released_featuriser():
    bond, rel, dist, mask, hops = _released_batch()
    want = torch.cat([bond, rel, released_bessel(dist)], dim=1).permute(0, 2, 3, 1)  # [B, N, N, 46]
    got = relation_features(bond.permute(0, 2, 3, 1), hops, dist, mask)
    pairs = mask[:, :, None] & mask[:, None, :]
    assert got.shape == want.shape == (2, 8, 8, 46)
    # float32-rounded nπ in the released layer: phase error ≤ 32π · 2e-8 · x
    torch.testing.assert_close(got[pairs], want[pairs], rtol=0, atol=1e-5)
    assert (got[~pairs] == 0).all()
    # The dummy node: no bond, "no path" to every other atom, hop 0 to itself, distance basis 0 everywhere.
    dummy = got[:, 0, :, :]
    assert (dummy[..., :8] == 0).all() and (dummy[..., 14:] == 0).all()
    assert (dummy[:, 0, 8] == 1).all() and (dummy[:, 1:, 13][pairs[:, 0, 1:]] == 1).all()
    # The isolated fragment (atom 7 of molecule 0) has no path to the chain; the chain's ends are 5 hops apart.
    assert (got[0, 7, 1:7, 13] == 1).all() and (got[0, 7, 7, 8] == 1).all()
    assert got[0, 1, 6, 12] == 1 and got[0, 1, 5, 12] == 1 and got[0, 1, 4, 11] == 1


def test_hop_counts_match_floyd_warshall():
    _, rel, _, mask, hops = _released_batch()
    adjacency = rel[:, 1] > 0                            # hop == 1 ⇔ bonded
    got = hop_counts(adjacency)
    pairs = mask[:, :, None] & mask[:, None, :]
    assert torch.equal(got[pairs], hops[pairs])
    assert torch.equal(hop_one_hot(got)[pairs].to(DT), rel.permute(0, 2, 3, 1)[pairs])
    assert hop_counts(torch.zeros(0, 0, 0, dtype=torch.bool)).shape == (0, 0, 0)


def test_distance_basis_scalar_formula():
    dists = [0.0, 1e-3, 0.74, 1.52, 3.3, 7.9, 12.0, 19.5, 20.0 - 2e-6, 20.0, 25.0, 1e6]
    got = distance_basis(torch.tensor(dists, dtype=DT))
    assert got.shape == (len(dists), 32)
    for row, d in zip(got.tolist(), dists):
        x = (d + 1e-6) / 20.0
        env = 1 / x - 28 * x ** 5 + 48 * x ** 6 - 21 * x ** 7 if x < 1 else 0.0   # p = exponent + 1 = 6
        want = [env * math.sin(n * math.pi * x) for n in range(1, 33)]
        for a, b in zip(row, want):
            assert a == pytest.approx(b, rel=1e-12, abs=1e-9)
    far = distance_basis(torch.tensor([math.inf, 1e30], dtype=DT, requires_grad=True))
    assert (far == 0).all()
    far.sum().backward()


@pytest.mark.parametrize("zero_padding", [False, True])
def test_spec_matches_released_module(zero_padding):
    """Same state dict into the spec's module and into the transcription; real rows agree in float64."""
    bond, rel, dist, mask, hops = _released_batch()
    d_model, heads = 12, 3
    edges_att = torch.cat([bond, rel, released_bessel(dist).to(DT)], dim=1)
    torch.manual_seed(1)
    module = MultiHeadRelativeAttention(d_model, heads).to(DT).eval()
    sd = {name: torch.randn_like(t) * 0.4 for name, t in module.state_dict().items()}
    module.load_state_dict(sd, strict=True)
    B, N = mask.shape
    x = torch.randn(B, N, d_model, dtype=DT)
    if zero_padding:
        x = x.masked_fill(~mask[..., None], 0.0)   # the released embedding of padded atoms: Linear(0) = bias
    got = module(x, edges_att.permute(0, 2, 3, 1), mask)
    want = released_self_attention(sd, x, edges_att, mask.to(DT), heads)
    torch.testing.assert_close(got[mask], want[mask], **TIGHT)
    torch.testing.assert_close(got[~mask], sd["output_linear.bias"].expand(int((~mask).sum()), d_model), **TIGHT)


def test_state_dict_names_and_shapes():
    """The names and shapes of huggingmolecules' MultiHeadedAttention(RMatAttention) at R-MAT's defaults."""
    d_model, h, d_k, c = 768, 12, 64, 46
    want = {"linear_layers.0.weight": (d_model, d_model), "linear_layers.0.bias": (d_model,),
            "linear_layers.1.weight": (d_model, d_model), "linear_layers.1.bias": (d_model,),
            "linear_layers.2.weight": (d_model, d_model), "linear_layers.2.bias": (d_model,),
            "output_linear.weight": (d_model, d_model), "output_linear.bias": (d_model,),
            "attention.relative_u": (1, h, 1, d_k), "attention.relative_v": (1, h, 1, d_k, 1)}
    for name in ("relative_K", "relative_V"):
        want.update({f"attention.{name}.nn.0.weight": (d_k, c), f"attention.{name}.nn.0.bias": (d_k,),
                     f"attention.{name}.nn.3.weight": (d_model, d_k), f"attention.{name}.nn.3.bias": (d_model,)})
    got = {name: tuple(t.shape) for name, t in MultiHeadRelativeAttention(d_model, h).state_dict().items()}
    assert got == want


# ---------------------------------------------------------------- the fused algorithm's identities

def test_associative_logits_and_values():
    """a_ih = W₂ᴷ_hᵀ((q_i + k_i)/√d_k + v_h), e_ij = q_i·k_j/√d_k + a_ih·uᴷ_ij + const_ih, and
    Σ_j α_ij rⱽ_ij = W₂ⱽ_h Σ_j α_ij uⱽ_ij + c₂ⱽ_h Σ_j α_ij: computed without rᴷ, rⱽ, against the spec."""
    q, k, v, relation, mask, phi_k, phi_v, u, v_rel = _inputs(seed=5)
    B, N, H, D = q.shape
    scale = 1 / math.sqrt(D)
    pairs = mask[:, :, None] & mask[:, None, :]

    # Eager logits with materialised rᴷ (the released form), for the logit identity itself.
    def hidden(p):
        return F.leaky_relu(relation @ p[0].T + p[1], 0.1)                             # [B, N, N, hidden]
    u_k, u_v = hidden(phi_k), hidden(phi_v)
    r_k = (u_k @ phi_k[2].T + phi_k[3]).reshape(B, N, N, H, D)
    eager = (torch.einsum("bihd,bjhd->bhij", q, k) + torch.einsum("bihd,bijhd->bhij", q + k, r_k)) * scale \
        + torch.einsum("bihd,hd->bhi", k, u)[..., None] + torch.einsum("bijhd,hd->bhij", r_k, v_rel)

    w2k, c2k = phi_k[2].reshape(H, D, -1), phi_k[3].reshape(H, D)                         # per head
    g = (q + k) * scale + v_rel                                                          # [B, N, H, D]
    a = torch.einsum("bihd,hdm->bihm", g, w2k)                                           # once per row
    row_const = torch.einsum("bihd,hd->bhi", g, c2k) + torch.einsum("bihd,hd->bhi", k, u)
    pair_term = torch.einsum("bihm,bijm->bhij", a, u_k)                                  # one hidden-long dot
    fused = torch.einsum("bihd,bjhd->bhij", q, k) * scale + pair_term + row_const[..., None]
    torch.testing.assert_close(fused, eager, **TIGHT)

    # The softmax needs neither row constant: drop both, then accumulate Σ α uⱽ and project once per row.
    logits = (torch.einsum("bihd,bjhd->bhij", q, k) * scale + pair_term).masked_fill(~pairs[:, None], -math.inf)
    alpha = torch.softmax(logits, -1).nan_to_num(0.0)
    acc = torch.einsum("bhij,bijm->bihm", alpha, u_v)                                    # [B, N, H, hidden]
    w2v, c2v = phi_v[2].reshape(H, D, -1), phi_v[3].reshape(H, D)
    z = torch.einsum("bhij,bjhd->bihd", alpha, v) + torch.einsum("bihm,hdm->bihd", acc, w2v) \
        + alpha.sum(-1).transpose(1, 2)[..., None] * c2v
    want = relative_attention(q, k, v, relation, phi_k, phi_v, mask, u=u, v_rel=v_rel)
    torch.testing.assert_close(z.masked_fill(~mask[..., None, None], 0.0), want, **TIGHT)


def test_row_constants_cancel():
    """The u-term and φ_K's output bias c₂ᴷ only add per-row constants: the output ignores them."""
    q, k, v, relation, mask, phi_k, phi_v, u, v_rel = _inputs(seed=7)
    base = relative_attention(q, k, v, relation, phi_k, phi_v, mask, v_rel=v_rel)
    shifted_k = [*phi_k[:3], phi_k[3] + 5.0]
    for out in (relative_attention(q, k, v, relation, phi_k, phi_v, mask, u=u * 3, v_rel=v_rel),
                relative_attention(q, k, v, relation, shifted_k, phi_v, mask, u=u, v_rel=v_rel)):
        torch.testing.assert_close(out, base, rtol=1e-10, atol=1e-10)
    # ... and the output does depend on v_rel and on φ_V's bias (the test could fail).
    assert not torch.allclose(base, relative_attention(q, k, v, relation, phi_k, phi_v, mask, v_rel=v_rel * 2))


# ---------------------------------------------------------------- padding, tiny and empty inputs

def test_padding_never_reaches_real_rows():
    q, k, v, relation, mask, phi_k, phi_v, u, v_rel = _inputs(seed=2)
    params = [*phi_k, *phi_v, u, v_rel]

    def run(q, k, v, relation):
        leaves = [t.clone().requires_grad_() for t in (q, k, v, relation, *params)]
        out = relative_attention(*leaves[:4], leaves[4:8], leaves[8:12], mask, u=leaves[12], v_rel=leaves[13])
        (out * torch.linspace(-1, 2, out.numel(), dtype=DT).reshape(out.shape)).sum().backward()
        return out, [t.grad for t in leaves]

    out, grads = run(q, k, v, relation)
    pad = ~mask
    pad_pairs = ~(mask[:, :, None] & mask[:, None, :])
    poisoned = [t.clone() for t in (q, k, v)]
    for t in poisoned:
        t[pad] = math.nan
    rel = relation.clone()
    rel[pad_pairs] = math.inf
    out2, grads2 = run(*poisoned, rel)
    assert torch.equal(out, out2) and (out[pad] == 0).all()
    for g, g2 in zip(grads, grads2):
        assert torch.isfinite(g2).all()
        torch.testing.assert_close(g2, g, **TIGHT)
    # A changed real key does change the output: the comparison above can fail.
    k3 = k.clone()
    k3[1, 0] += 1.0
    assert not torch.allclose(relative_attention(q, k3, v, relation, phi_k, phi_v, mask, u=u, v_rel=v_rel), out)


def test_one_atom_molecule():
    """One real atom attends to itself only: z = v_0 + rⱽ_00."""
    q, k, v, relation, mask, phi_k, phi_v, u, v_rel = _inputs(B=1, N=3, lengths=(1,), seed=4)
    out = relative_attention(q, k, v, relation, phi_k, phi_v, mask, u=u, v_rel=v_rel)
    b = relation[0, 0, 0].tolist()
    r_v = torch.tensor([_phi_scalar(b, phi_v, c) for c in range(phi_v[3].numel())], dtype=DT).reshape(v.shape[2:])
    torch.testing.assert_close(out[0, 0], v[0, 0] + r_v, **TIGHT)
    assert (out[0, 1:] == 0).all()


def test_empty_batch_and_empty_molecule():
    q, k, v, relation, mask, phi_k, phi_v, u, v_rel = _inputs(B=0, lengths=())
    assert relative_attention(q, k, v, relation, phi_k, phi_v, mask, u=u, v_rel=v_rel).shape == (0, 5, 2, 3)
    q, k, v, relation, mask, phi_k, phi_v, u, v_rel = _inputs(lengths=(0, 4), seed=6)
    q.requires_grad_()
    phi_k[0].requires_grad_()
    out = relative_attention(q, k, v, relation, phi_k, phi_v, mask, u=u, v_rel=v_rel)
    assert (out[0] == 0).all() and torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(phi_k[0].grad).all() and (q.grad[0] == 0).all()

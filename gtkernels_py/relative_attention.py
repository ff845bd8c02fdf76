"""Reference of R-MAT's relative molecule attention, in plain eager PyTorch (docs/semantics.md §6).

This file is the specification of the R-MAT op family: the maths of the released code (gmum/huggingmolecules,
``RMatAttention``, ``RMatEdgeFeaturesLayer``, ``BesselBasisLayerEnvelope`` and the R-MAT featuriser), written
in this project's layout. It materialises the relation tensors rᴷ, rⱽ ``[B, N, N, H, d_k]`` as the released
code does; the fused kernels must not (docs/semantics.md §6.5).

Layout (padded only)
--------------------
``q, k, v``   ``[B, N, H, d_k]`` (the released code holds them as ``[B, H, N, d_k]``),
``relation``  ``[B, N, N, C]``, b_ij for query atom i and key atom j, C = 46 in the released model
              (the released code holds it channel-first, ``[B, C, N, N]``),
``mask``      bool ``[B, N]``, True = real atom (the dummy node is a real atom); ``None`` = all real.

φ parameters are ``[W1, c1, W2, c2]`` in ``nn.Linear`` layout: ``W1 [d_hidden, C]``, ``W2 [H·d_k, d_hidden]``,
head h owning rows ``h·d_k … (h+1)·d_k − 1`` of ``W2`` and ``c2``. The released model has d_hidden = d_k.

Float32 and float64; every output has the dtype of ``q``.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Widths of the three parts of b_ij in the released featuriser: bond features, hop one-hot, distance basis.
BOND_CHANNELS = 8
HOP_CHANNELS = 6
DISTANCE_CHANNELS = 32
RELATION_CHANNELS = BOND_CHANNELS + HOP_CHANNELS + DISTANCE_CHANNELS

#: Hop counts from this value up share one channel (the released ``max_order``).
MAX_HOP = 4
#: Added to every distance before the basis, as in the released ``BesselBasisLayerEnvelope``.
DISTANCE_OFFSET = 1e-6
#: Distance the released featuriser gives every pair that involves the dummy node (beyond any cutoff).
DUMMY_DISTANCE = 1e6
#: Negative slope of the LeakyReLU inside φ_K and φ_V.
LEAKY_SLOPE = 0.1
#: The released basis' cutoff (Å) and envelope exponent (p = exponent + 1 in the envelope polynomial).
BASIS_CUTOFF = 20.0
ENVELOPE_EXPONENT = 5


def distance_basis(dist: Tensor, num_radial: int = DISTANCE_CHANNELS, cutoff: float = BASIS_CUTOFF,
                   envelope_exponent: float = ENVELOPE_EXPONENT) -> Tensor:
    """The released radial basis: ``[..., num_radial]`` from distances ``dist [...]`` in Å, in ``dist``'s dtype.

    x = (d + 1e-6) / cutoff, p = envelope_exponent + 1,
    env(x) = 1/x − (p+1)(p+2)/2 · x^(p−1) + p(p+2) · x^p − p(p+1)/2 · x^(p+1) for x < 1, else 0,
    basis_n(d) = env(x) · sin(nπ x), n = 1 … num_radial.
    There is no √(2/cutoff) factor (the released layer computes one and never uses it). The released layer
    rounds nπ to float32; here nπ is in ``dist``'s dtype (a relative difference below 1e-7).
    """
    x = (dist.unsqueeze(-1) + DISTANCE_OFFSET) / cutoff
    inside = x < 1.0
    # Evaluate the polynomial and the sine only on x < 1 (a safe 0.5 elsewhere), so that far or infinite
    # distances give 0 with finite gradients instead of 0 · inf.
    xs = torch.where(inside, x, torch.full_like(x, 0.5))
    p = envelope_exponent + 1.0
    a, b, c = -(p + 1.0) * (p + 2.0) / 2.0, p * (p + 2.0), -p * (p + 1.0) / 2.0
    env = 1.0 / xs + a * xs ** (p - 1.0) + b * xs ** p + c * xs ** (p + 1.0)
    env = torch.where(inside, env, torch.zeros_like(env))
    n = torch.arange(1, num_radial + 1, dtype=dist.dtype, device=dist.device)
    return env * torch.sin(math.pi * n * xs)


def hop_one_hot(hops: Tensor, max_hop: int = MAX_HOP) -> Tensor:
    """``[..., max_hop + 2]`` float one-hot of integer shortest-path lengths ``hops``.

    Channel h for h < max_hop, channel max_hop for h ≥ max_hop, channel max_hop + 1 for a negative ``hops``
    (no path: the dummy node's pairs and pairs of disconnected fragments; the released featuriser's 999).
    """
    channel = torch.where(hops < 0, torch.full_like(hops, max_hop + 1), hops.clamp(max=max_hop))
    return F.one_hot(channel.long(), max_hop + 2).to(torch.get_default_dtype())


def hop_counts(adjacency: Tensor) -> Tensor:
    """Shortest-path lengths ``[B, N, N]`` (int64, −1 where no path) of the bool graphs ``adjacency [B, N, N]``.

    The diagonal is 0 for every atom (the released Floyd–Warshall sets it so, for the dummy node too).
    """
    n = adjacency.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=adjacency.device).expand_as(adjacency)
    hops = torch.full(adjacency.shape, -1, dtype=torch.int64, device=adjacency.device)
    hops = hops.masked_fill(eye, 0)
    reached = eye.clone()
    step = adjacency.to(torch.float64)
    for length in range(1, n):
        grown = reached | (reached.to(torch.float64) @ step > 0)
        hops = hops.masked_fill(grown & ~reached, length)
        if torch.equal(grown, reached):
            break
        reached = grown
    return hops


def relation_features(bond: Tensor, hops: Tensor, dist: Tensor, mask: Optional[Tensor] = None, *,
                      num_radial: int = DISTANCE_CHANNELS, cutoff: float = BASIS_CUTOFF,
                      envelope_exponent: float = ENVELOPE_EXPONENT) -> Tensor:
    """b ``[B, N, N, 8 + 6 + num_radial]`` = [bond | hop_one_hot(hops) | distance_basis(dist)], dtype of ``bond``.

    Args:
        bond: ``[B, N, N, 8]`` float, the released bond channels: 0 a mask flag (0 in the released featuriser),
            1–4 bond type one-hot (single, aromatic, double, triple), 5 aromatic, 6 conjugated, 7 in ring;
            all 0 for an unbonded pair, the diagonal and the dummy node's pairs.
        hops: ``[B, N, N]`` integer shortest-path lengths, negative where there is no path (``hop_counts``).
        dist: ``[B, N, N]`` distances in Å; ``DUMMY_DISTANCE`` for every pair with the dummy node,
            its diagonal included (so the basis is 0 there); 0 on the other atoms' diagonals.
        mask: bool ``[B, N]``; a pair with a padded atom gets b = 0 (the released collate pads bond and hop
            channels with 0 and the distance with 0, whose basis is ≈ nπ; attention never reads those pairs).
    """
    basis = distance_basis(dist, num_radial, cutoff, envelope_exponent).to(bond.dtype)
    b = torch.cat([bond, hop_one_hot(hops).to(bond.dtype), basis], dim=-1)
    if mask is not None:
        pairs = mask[:, :, None] & mask[:, None, :]
        b = b.masked_fill(~pairs[..., None], 0.0)
    return b


def phi_hidden(relation: Tensor, phi_params: Sequence[Tensor], dropout_p: float = 0.0) -> Tensor:
    """u = LeakyReLU₀.₁(W1 b + c1) ``[..., d_hidden]``: the first layer of φ, shared by all heads.

    ``dropout_p`` > 0 applies dropout to u (the released ``nn.Dropout`` between the two layers).
    """
    u = F.leaky_relu(F.linear(relation, phi_params[0], phi_params[1]), LEAKY_SLOPE)
    return F.dropout(u, dropout_p) if dropout_p > 0.0 else u


def phi_relation(relation: Tensor, phi_params: Sequence[Tensor], num_heads: int, dropout_p: float = 0.0) -> Tensor:
    """r = φ(b) = W2 u + c2 reshaped to ``[B, N, N, H, d_k]`` (the relation tensor rᴷ or rⱽ, materialised)."""
    r = F.linear(phi_hidden(relation, phi_params, dropout_p), phi_params[2], phi_params[3])
    return r.unflatten(-1, (num_heads, r.shape[-1] // num_heads))


def relative_attention(q: Tensor, k: Tensor, v: Tensor, relation: Tensor, phi_k_params: Sequence[Tensor],
                       phi_v_params: Sequence[Tensor], mask: Optional[Tensor] = None, *,
                       u: Optional[Tensor] = None, v_rel: Optional[Tensor] = None, dropout_p: float = 0.0,
                       phi_dropout_p: float = 0.0) -> Tensor:
    """R-MAT relative attention per head (docs/semantics.md §6.3): ``z [B, N, H, d_k]``.

    e_ij = [q_i·k_j + (q_i + k_i)·rᴷ_ij] / √d_k + k_i·u_h + rᴷ_ij·v_h  over real keys j,
    α_ij = softmax_j(e_ij) (then dropout), z_i = Σ_j α_ij (v_j + rⱽ_ij).

    Args:
        q, k, v: ``[B, N, H, d_k]``.
        relation: b ``[B, N, N, C]``.
        phi_k_params, phi_v_params: ``[W1, c1, W2, c2]`` of φ_K and φ_V.
        mask: bool ``[B, N]``.
        u, v_rel: ``[H, d_k]``, the released ``relative_u`` and ``relative_v``; ``None`` = 0. The u-term is
            constant along j, so the softmax cancels it; it is kept so that released checkpoints map 1:1.
        dropout_p: dropout on α (training only; the caller passes 0 in eval).
        phi_dropout_p: dropout on φ's hidden layer u (independent draws for φ_K and φ_V).

    Padded query rows give z = 0 (the released code gives them an attention over the real keys, which no real
    row reads); a row without any real key gives z = 0. Padded slots of q, k, v and padded pairs of
    ``relation`` may hold anything, NaN included: they never change a real row's output or any gradient.
    """
    mask = torch.ones(q.shape[:2], dtype=torch.bool, device=q.device) if mask is None else mask
    num_heads, d_k = q.shape[-2], q.shape[-1]
    pairs = mask[:, :, None] & mask[:, None, :]                                        # [B, N, N]
    padding = ~mask[:, :, None, None]
    q, k, v = (t.masked_fill(padding, 0.0) for t in (q, k, v))
    relation = relation.masked_fill(~pairs[..., None], 0.0)

    r_k = phi_relation(relation, phi_k_params, num_heads, phi_dropout_p)              # [B, N, N, H, d_k]
    r_v = phi_relation(relation, phi_v_params, num_heads, phi_dropout_p)
    scale = 1.0 / math.sqrt(d_k)
    content = torch.einsum("bihd,bjhd->bhij", q, k) * scale
    # (q_i + k_i)·rᴷ_ij: the released code adds the query row's own key, k_i, not k_j.
    relative = torch.einsum("bihd,bijhd->bhij", q + k, r_k) * scale
    scores = content + relative
    if u is not None:
        scores = scores + torch.einsum("bihd,hd->bhi", k, u)[..., None]
    if v_rel is not None:
        scores = scores + torch.einsum("bijhd,hd->bhij", r_k, v_rel)

    allowed = pairs[:, None]                                                           # [B, 1, N, N]
    scores = scores.masked_fill(~allowed, float("-inf"))
    # A row with no real key (a padded row) gets finite scores, so softmax and its gradient stay NaN-free.
    scores = scores.masked_fill(~allowed.any(-1, keepdim=True), 0.0)
    alpha = torch.softmax(scores, dim=-1).masked_fill(~allowed, 0.0)
    if dropout_p > 0.0:
        alpha = F.dropout(alpha, dropout_p)
    z = torch.einsum("bhij,bjhd->bihd", alpha, v) + torch.einsum("bhij,bijhd->bihd", alpha, r_v)
    return z.masked_fill(padding, 0.0)


def _linear_params(seq: nn.Sequential) -> List[Tensor]:
    return [t for layer in seq if isinstance(layer, nn.Linear) for t in (layer.weight, layer.bias)]


class RelationMLP(nn.Module):
    """φ: Linear(C → d_hidden) → LeakyReLU(0.1) → Dropout → Linear(d_hidden → H·d_k).

    State dict (the released ``RMatEdgeFeaturesLayer``): ``nn.0.weight [d_hidden, C]``, ``nn.0.bias``,
    ``nn.3.weight [H·d_k, d_hidden]``, ``nn.3.bias``.
    """

    def __init__(self, d_edge: int, d_hidden: int, d_model: int, dropout: float = 0.0):
        super().__init__()
        self.nn = nn.Sequential(nn.Linear(d_edge, d_hidden), nn.LeakyReLU(LEAKY_SLOPE), nn.Dropout(dropout),
                                nn.Linear(d_hidden, d_model))

    def params(self) -> List[Tensor]:
        return _linear_params(self.nn)


class RelativeAttention(nn.Module):
    """The released ``RMatAttention``: φ_K, φ_V and the u, v biases of one layer; no projections.

    ``forward(q, k, v, relation, mask=None)`` with ``q, k, v [B, N, H, d_k]``, ``relation [B, N, N, d_edge]``
    returns ``z [B, N, H, d_k]`` (``relative_attention``). Dropout (on α and inside φ) only in training.

    State dict, names and shapes as ``RMatAttention`` (d_k = d_model / H; the hidden width of φ is d_k):
    ``relative_K.nn.0.weight [d_k, d_edge]``, ``relative_K.nn.0.bias [d_k]``,
    ``relative_K.nn.3.weight [d_model, d_k]``, ``relative_K.nn.3.bias [d_model]``, the same for ``relative_V``,
    ``relative_u [1, H, 1, d_k]``, ``relative_v [1, H, 1, d_k, 1]``.
    """

    def __init__(self, d_model: int, num_heads: int, d_edge: int = RELATION_CHANNELS, dropout: float = 0.0):
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        self.num_heads, self.d_k, self.dropout = num_heads, d_model // num_heads, dropout
        self.relative_K = RelationMLP(d_edge, self.d_k, d_model, dropout)
        self.relative_V = RelationMLP(d_edge, self.d_k, d_model, dropout)
        self.relative_u = nn.Parameter(torch.empty(1, num_heads, 1, self.d_k))
        self.relative_v = nn.Parameter(torch.empty(1, num_heads, 1, self.d_k, 1))
        # huggingmolecules initialises every parameter of more than one dimension with Xavier.
        nn.init.xavier_uniform_(self.relative_u)
        nn.init.xavier_uniform_(self.relative_v)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, relation: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        p = self.dropout if self.training else 0.0
        return relative_attention(q, k, v, relation, self.relative_K.params(), self.relative_V.params(), mask,
                                  u=self.relative_u.reshape(self.num_heads, self.d_k),
                                  v_rel=self.relative_v.reshape(self.num_heads, self.d_k),
                                  dropout_p=p, phi_dropout_p=p)


class MultiHeadRelativeAttention(nn.Module):
    """The released ``MultiHeadedAttention`` around ``RMatAttention``: self-attention of one R-MAT layer.

    ``forward(x, relation, mask=None)``: ``x [B, N, d_model]``, ``relation [B, N, N, d_edge]``, bool ``mask``.
    Q, K, V = Linear(d_model → d_model, with bias)(x), split head-major into ``[B, N, H, d_k]``; the heads' z
    concatenated, then ``output_linear`` (with bias). A padded row's output is ``output_linear.bias``.

    State dict: ``linear_layers.{0,1,2}.weight [d_model, d_model]`` and ``.bias`` (Q, K, V),
    ``output_linear.weight``, ``output_linear.bias``, ``attention.*`` (``RelativeAttention``); so an R-MAT
    checkpoint's ``encoder.layers.{l}.self_attn.*`` entries load as they are.
    """

    def __init__(self, d_model: int, num_heads: int, d_edge: int = RELATION_CHANNELS, dropout: float = 0.0):
        super().__init__()
        self.attention = RelativeAttention(d_model, num_heads, d_edge, dropout)
        self.num_heads, self.d_k = num_heads, d_model // num_heads
        self.linear_layers = nn.ModuleList([nn.Linear(d_model, d_model) for _ in range(3)])
        self.output_linear = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor, relation: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        q, k, v = (lin(x).unflatten(-1, (self.num_heads, self.d_k)) for lin in self.linear_layers)
        return self.output_linear(self.attention(q, k, v, relation, mask).flatten(-2))

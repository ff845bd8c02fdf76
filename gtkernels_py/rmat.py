"""Reference of the whole R-MAT model, in plain eager PyTorch (docs/semantics.md §7).

The released ``RMatModel`` of gmum/huggingmolecules (``models_rmat.py``, ``models_common_utils.py``) in this
project's layout: relation tensors b ``[B, N, N, C]`` channel-last (the released code holds them
``[B, C, N, N]``). Same modules, same state-dict names and shapes, same initialisation, so a released
checkpoint's ``state_dict`` loads as it is:

``src_embed.lut``                          Linear(d_atom = 37 → d_model), then dropout
``encoder.layers.{l}.self_attn.*``         :class:`MultiHeadRelativeAttention` (its names, §6.3)
``encoder.layers.{l}.feed_forward.linears.{0,1}``   Linear(d → d_ff) → LeakyReLU(0.1) → dropout → Linear(d_ff → d)
``encoder.layers.{l}.sublayer.{0,1}.norm`` the pre-LN of attention and feed-forward: x ← x + dropout(f(LN(x)))
``encoder.norm``                           the final LayerNorm
``generator.att_net.{0,2}``                "grover" pooling: a = softmax_atoms(W₂ tanh(W₁ x)) (4 heads, no biases)
``generator.proj``                         Linear(4·d_model → d_output) of the 4 pooled vectors, concatenated

The model reads a molecule as the featuriser writes it (``gtkernels.data.rmat_features``): node features
``[B, N, 37]`` with the dummy node first, and the mask of real atoms (the released code derives it as "any
feature non-zero", which :func:`atom_mask` does too). Float32 and float64.
"""
from __future__ import annotations

from typing import Optional, Type

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .relative_attention import LEAKY_SLOPE, RELATION_CHANNELS, MultiHeadRelativeAttention

#: The released configuration (``RMatConfig``).
D_ATOM = 37
POOL_HIDDEN, POOL_HEADS = 128, 4
#: The released generator masks padded atoms' pooling logits with this value before the softmax.
POOL_MASK = -1e9


def atom_mask(node_features: Tensor) -> Tensor:
    """bool ``[B, N]``: a row with any non-zero feature is an atom (the dummy node's flag counts): the released
    ``batch_mask``."""
    return node_features.abs().sum(-1) != 0


class PositionwiseFeedForward(nn.Module):
    """Linear(d → d_hidden) → LeakyReLU(0.1) → Dropout → Linear(d_hidden → d): ``linears.{0,1}``."""

    def __init__(self, d_model: int, d_hidden: int, dropout: float = 0.0):
        super().__init__()
        self.linears = nn.ModuleList([nn.Linear(d_model, d_hidden), nn.Linear(d_hidden, d_model)])
        self.dropout = nn.ModuleList([nn.Dropout(dropout), nn.Dropout(dropout)])

    def forward(self, x: Tensor) -> Tensor:
        return self.linears[1](self.dropout[0](F.leaky_relu(self.linears[0](x), LEAKY_SLOPE)))


class SublayerConnection(nn.Module):
    """Pre-LN residual: x + dropout(f(LayerNorm(x))); state dict ``norm.{weight,bias}``."""

    def __init__(self, d_model: int, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, sublayer) -> Tensor:
        return x + self.dropout(sublayer(self.norm(x)))


class RMATEncoderLayer(nn.Module):
    """One R-MAT block: relative self-attention, then the feed-forward, each behind a pre-LN residual.

    ``forward(x, **attn_inputs)`` passes the keyword arguments to ``self_attn`` (the reference: ``relation``
    and ``mask``; the fused attention: the batch geometry, the graph codes and the dummy flags).
    """

    def __init__(self, d_model: int, num_heads: int, d_ff: int, d_edge: int = RELATION_CHANNELS,
                 dropout: float = 0.0, attention: Type[nn.Module] = MultiHeadRelativeAttention, **attn_kwargs):
        super().__init__()
        self.self_attn = attention(d_model, num_heads, d_edge, dropout, **attn_kwargs)
        self.feed_forward = PositionwiseFeedForward(d_model, d_ff, dropout)
        self.sublayer = nn.ModuleList([SublayerConnection(d_model, dropout), SublayerConnection(d_model, dropout)])

    def forward(self, x: Tensor, **attn_inputs) -> Tensor:
        x = self.sublayer[0](x, lambda h: self.self_attn(h, **attn_inputs))
        return self.sublayer[1](x, self.feed_forward)


class RMATEncoder(nn.Module):
    """``layers`` (:class:`RMATEncoderLayer` × L) and the final LayerNorm ``norm``."""

    def __init__(self, num_layers: int, d_model: int, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList([RMATEncoderLayer(d_model, **layer_kwargs) for _ in range(num_layers)])
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: Tensor, **attn_inputs) -> Tensor:
        for layer in self.layers:
            x = layer(x, **attn_inputs)
        return self.norm(x)


class GroverPooling(nn.Module):
    """The released ``Generator`` with ``aggregation_type='grover'`` and one output layer.

    ``forward(x [B, N, d], mask [B, N]) → [B, d_output]``: x is zeroed on padded rows, a = softmax over the
    molecule's atoms of ``att_net(x)`` ``[B, N, 4]`` (padded rows −1e9, so weight 0), pooled ``aᵀ x``
    ``[B, 4, d]`` flattened head-major, then ``proj``.
    """

    def __init__(self, d_model: int, d_output: int = 1, hidden: int = POOL_HIDDEN, heads: int = POOL_HEADS):
        super().__init__()
        self.att_net = nn.Sequential(nn.Linear(d_model, hidden, bias=False), nn.Tanh(),
                                     nn.Linear(hidden, heads, bias=False))
        self.proj = nn.Linear(d_model * heads, d_output)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        m = mask.unsqueeze(-1).to(x.dtype)
        x = x * m
        logits = self.att_net(x).masked_fill(m == 0, POOL_MASK)
        weights = torch.softmax(logits, dim=1)
        pooled = torch.matmul(weights.transpose(-1, -2), x)          # [B, heads, d]
        return self.proj(pooled.flatten(1))


class RMAT(nn.Module):
    """The released R-MAT (``RMatModel``), eager: relation tensors materialised, as released.

    Args:
        num_layers, d_model, num_heads, d_ff: released 10, 768, 12, 1536.
        d_atom: node features (37), d_edge: relation channels (46), d_output: targets (1).
        dropout: everywhere the released model has it (config ``dropout``; released 0).
        attention: the attention module class (the fused model passes ``gtkernels.FusedRelativeAttention``).

    ``forward(node_features [B, N, d_atom], relation [B, N, N, d_edge], mask=None) → [B, d_output]``; ``mask``
    bool ``[B, N]`` (None: :func:`atom_mask` of the features). Every parameter of more than one dimension gets
    Xavier-uniform initialisation (the released ``init_type='uniform'``).
    """

    def __init__(self, num_layers: int = 10, d_model: int = 768, num_heads: int = 12, d_ff: int = 1536, *,
                 d_atom: int = D_ATOM, d_edge: int = RELATION_CHANNELS, d_output: int = 1, dropout: float = 0.0,
                 attention: Type[nn.Module] = MultiHeadRelativeAttention, **attn_kwargs):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        self.src_embed = nn.Module()
        self.src_embed.lut = nn.Linear(d_atom, d_model)
        self.embed_dropout = nn.Dropout(dropout)
        self.encoder = RMATEncoder(num_layers, d_model, num_heads=num_heads, d_ff=d_ff, d_edge=d_edge,
                                   dropout=dropout, attention=attention, **attn_kwargs)
        self.generator = GroverPooling(d_model, d_output)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def embed(self, node_features: Tensor) -> Tensor:
        return self.embed_dropout(self.src_embed.lut(node_features))

    def forward(self, node_features: Tensor, relation: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        mask = atom_mask(node_features) if mask is None else mask
        x = self.encoder(self.embed(node_features), relation=relation, mask=mask)
        return self.generator(x, mask)

"""Reference modules of the Geometric Transformer (docs/semantics.md §2), in plain eager PyTorch.

Parameter names follow the paper's official code where a module exists there, so checkpoints load:
attention ``linears.{0..3}.weight`` and ``transform_dist.seq.{0,2,4,6}.{weight,bias}``; positional encoding
``net.{0,2}.{weight,bias}`` and ``embed.{weight,bias}``.

The architecture is written here once. The fused model (:class:`gtkernels.models.GeometricTransformer`) builds
this :class:`GeometricTransformer` with other layers: its attention layer is :class:`GeometricAttention` with a
fused ``inner_attn``, its encoding the fused :class:`gtkernels.nn.GeometricEncoding`.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .functional import geometric_attention, geometric_encoding


def linear_params(seq: nn.Sequential) -> List[Tensor]:
    """Flat ``[W0, b0, W1, b1, ...]`` of the ``nn.Linear`` layers of ``seq``, in order."""
    out: List[Tensor] = []
    for layer in seq:
        if isinstance(layer, nn.Linear):
            out += [layer.weight, layer.bias]
    return out


class PsiMLP(nn.Module):
    """ψω: Linear(1→h) → ReLU → [Linear(h→h) → ReLU] × layers → Linear(h→1). Paper: h = 50, layers = 2."""

    def __init__(self, hidden: int = 50, layers: int = 2):
        super().__init__()
        mods: List[nn.Module] = [nn.Linear(1, hidden), nn.ReLU()]
        for _ in range(layers):
            mods += [nn.Linear(hidden, hidden), nn.ReLU()]
        mods.append(nn.Linear(hidden, 1))
        self.seq = nn.Sequential(*mods)

    def params(self) -> List[Tensor]:
        return linear_params(self.seq)

    def forward(self, rinv: Tensor) -> Tensor:
        """rinv ``[...]`` → ψω(rinv) ``[...]``."""
        return self.seq(rinv.unsqueeze(-1)).squeeze(-1)


class GeometricInnerAttention(nn.Module):
    """The gated softmax product O = (softmax(QKᵀ/√d_k) ⊙ ψω(1/r)²) V of every head (docs/semantics.md §2).

    Holds no parameters: ψω's come from the calling layer, which owns them under the paper's names.
    ``forward(q, k, v, pos, psi_params, mask=None, *, cu_seqlens=None, max_seqlen=None)``: ``q, k, v`` are
    ``[B, N, H, d_k]`` (padded) or ``[T, H, d_k]`` (packed); ``max_seqlen`` is the fused ops' host bound of the
    molecule size, which this reference does not need. Returns O shaped like ``q``.
    """

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.dropout = dropout

    def forward(self, q: Tensor, k: Tensor, v: Tensor, pos: Tensor, psi_params: List[Tensor],
                mask: Optional[Tensor] = None, *, cu_seqlens: Optional[Tensor] = None,
                max_seqlen: Optional[int] = None) -> Tensor:
        return geometric_attention(q, k, v, pos, psi_params, mask, cu_seqlens=cu_seqlens,
                                   dropout_p=self.dropout if self.training else 0.0)

    def extra_repr(self) -> str:
        return f"dropout={self.dropout}"


class GeometricAttention(nn.Module):
    """Multi-head geometric self-attention (the paper's ``MultiHeadedAttention``, self-attention form).

    The layer owns the Q, K, V and output projections ``linears`` and ψω ``transform_dist``; ``inner_attn``
    computes the gated softmax product from the projected heads and ψω's parameters
    (:class:`GeometricInnerAttention` unless another one is given, e.g. the fused one of
    :class:`gtkernels.FusedGeometricAttention`).

    ``forward(x, pos, mask=None, *, cu_seqlens=None, max_seqlen=None)``: ``x`` is ``[B, N, d_model]`` with
    ``pos [B, N, 3]`` and an optional bool ``mask [B, N]``, or packed ``x [T, d_model]``, ``pos [T, 3]`` with int32
    ``cu_seqlens [B+1]``; ``pos``, ``mask``, ``cu_seqlens`` and ``max_seqlen`` go to ``inner_attn`` as they are.
    Returns a tensor shaped like ``x``.
    """

    def __init__(self, d_model: int, num_heads: int, psi_hidden: int = 50, psi_layers: int = 2,
                 dropout: float = 0.0, bias: bool = False, inner_attn: Optional[nn.Module] = None):
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        self.d_model, self.num_heads, self.d_k = d_model, num_heads, d_model // num_heads
        self.linears = nn.ModuleList([nn.Linear(d_model, d_model, bias=bias) for _ in range(4)])
        self.transform_dist = PsiMLP(psi_hidden, psi_layers)
        self.inner_attn = GeometricInnerAttention(dropout) if inner_attn is None else inner_attn

    def forward(self, x: Tensor, pos, mask: Optional[Tensor] = None, *, cu_seqlens: Optional[Tensor] = None,
                max_seqlen: Optional[int] = None) -> Tensor:
        q, k, v = (lin(x).unflatten(-1, (self.num_heads, self.d_k)) for lin in self.linears[:3])
        out = self.inner_attn(q, k, v, pos, self.transform_dist.params(), mask, cu_seqlens=cu_seqlens,
                              max_seqlen=max_seqlen)
        return self.linears[3](out.flatten(-2))

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, num_heads={self.num_heads}"


class GeometricEncoding(nn.Module):
    """Geometric positional encoding: PE_i = Linear(1→d)(Σ_j φ(rinv_ij)), φ = Linear(1→h)→GELU→Linear(h→1)→GELU.

    ``forward(pos, mask=None, *, cu_seqlens=None)`` returns ``[B, N, d_model]`` (or ``[T, d_model]`` packed).
    Padding atoms get ``embed.bias`` (their scalar is 0), which the model never reads.
    """

    def __init__(self, d_model: int, hidden: int = 50):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.GELU(), nn.Linear(hidden, 1), nn.GELU())
        self.embed = nn.Linear(1, d_model)

    def params(self) -> List[Tensor]:
        return linear_params(self.net)

    def forward(self, pos: Tensor, mask: Optional[Tensor] = None, *,
                cu_seqlens: Optional[Tensor] = None) -> Tensor:
        return self.embed(geometric_encoding(pos, self.params(), mask, cu_seqlens=cu_seqlens).unsqueeze(-1))


class GEGLU(nn.Module):
    """GEGLU(x) = GELU(x W₁) ⊙ (x W₂), W₁, W₂: d_in → d_out without bias."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.w1 = nn.Linear(d_in, d_out, bias=False)
        self.w2 = nn.Linear(d_in, d_out, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.w1(x)) * self.w2(x)


class EncoderBlock(nn.Module):
    """Pre-LayerNorm block: x ← x + Attn(LN(x)); x ← x + FF(LN(x)), FF = Linear(4d→d) ∘ GEGLU(d→4d).

    ``attention`` is the class (or factory) of the attention layer, called as
    ``attention(d_model, num_heads, psi_hidden, psi_layers, dropout, **attn_kwargs)``.
    """

    def __init__(self, d_model: int, num_heads: int, psi_hidden: int = 50, psi_layers: int = 2,
                 dropout: float = 0.0, *, attention: Callable[..., nn.Module] = GeometricAttention,
                 **attn_kwargs):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = attention(d_model, num_heads, psi_hidden, psi_layers, dropout, **attn_kwargs)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(GEGLU(d_model, 4 * d_model), nn.Dropout(dropout),
                                nn.Linear(4 * d_model, d_model, bias=False))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, pos, mask: Optional[Tensor] = None, *,
                cu_seqlens: Optional[Tensor] = None) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x), pos, mask, cu_seqlens=cu_seqlens))
        return x + self.drop(self.ff(self.norm2(x)))


class GeometricTransformer(nn.Module):
    """The full model: per-molecule property from atom charges ``z`` and positions ``pos`` (Å).

    ``forward(z, pos, mask=None, *, cu_seqlens=None, include_atomref=True)`` with padded ``z [B, N]`` (int,
    0 = padding), ``pos [B, N, 3]`` or packed ``z [T]``, ``pos [T, 3]``, ``cu_seqlens [B+1]``. Returns ``[B]``: the
    sum over real atoms of ``y_i = head(h_i)·std + mean + atomref[z_i]``, float64: the network runs in the weights'
    dtype, and ``·std + mean + atomref`` and the sum over atoms in float64 (``mean``, ``std`` and ``atomref`` are
    float64 buffers), so that a U0 of ~1e7 meV keeps the network's ~1e-7 relative resolution instead of float32's
    0.25 meV steps. The final norm and the head run in the weights' dtype also under ``torch.autocast`` (a bf16
    read-out would round U0 residuals of ~1e5 meV to ~500 meV). ``include_atomref=False`` leaves out Σ atomref.
    The paper's configuration is the default (10 blocks, d_model 512, 256 heads).

    ``attention`` and ``encoding`` are the classes (or factories) of the layers: ``attention(d_model, num_heads,
    psi_hidden, psi_layers, dropout, **layer_kwargs)`` in every :class:`EncoderBlock`, ``encoding(d_model,
    phi_hidden, **layer_kwargs)``; the parameter names do not depend on them.
    """

    def __init__(self, num_layers: int = 10, d_model: int = 512, num_heads: int = 256, psi_hidden: int = 50,
                 psi_layers: int = 2, phi_hidden: int = 50, dropout: float = 0.0, max_z: int = 50,
                 mean: float = 0.0, std: float = 1.0, atomref: Optional[Tensor] = None, *,
                 attention: Callable[..., nn.Module] = GeometricAttention,
                 encoding: Callable[..., nn.Module] = GeometricEncoding, **layer_kwargs):
        super().__init__()
        self.embedding = nn.Embedding(max_z, d_model, padding_idx=0)
        self.encoding = encoding(d_model, phi_hidden, **layer_kwargs)
        self.layers = nn.ModuleList([
            EncoderBlock(d_model, num_heads, psi_hidden, psi_layers, dropout, attention=attention, **layer_kwargs)
            for _ in range(num_layers)])
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, 1)
        # float64 buffers: the read-out sums in float64 (see the class docstring); a state dict with float32
        # buffers loads into them unchanged (load_state_dict copies into the buffers' dtype)
        self.register_buffer("mean", torch.tensor(float(mean), dtype=torch.float64))
        self.register_buffer("std", torch.tensor(float(std), dtype=torch.float64))
        self.register_buffer("atomref", torch.zeros(max_z, dtype=torch.float64) if atomref is None
                             else torch.as_tensor(atomref).to(torch.float64))
        # The paper initialises every matrix of the encoder stack (ψω excepted) with Xavier-uniform.
        for name, p in self.layers.named_parameters():
            if p.dim() > 1 and "transform_dist" not in name:
                nn.init.xavier_uniform_(p)

    def forward(self, z: Tensor, pos: Tensor, mask: Optional[Tensor] = None, *,
                cu_seqlens: Optional[Tensor] = None, include_atomref: bool = True) -> Tensor:
        if cu_seqlens is None and mask is None:
            mask = z > 0
        return self.network(z, dict(pos=pos, mask=mask, cu_seqlens=cu_seqlens), mask, cu_seqlens, include_atomref)

    def network(self, z: Tensor, geometry: Dict[str, Any], mask: Optional[Tensor], cu_seqlens: Optional[Tensor],
                include_atomref: bool = True) -> Tensor:
        """docs/semantics.md §2: embedding + encoding → encoder blocks → norm → head → read-out.

        ``geometry`` holds the keyword arguments of every encoding and attention call (the positions and the
        batch layout); ``mask`` and ``cu_seqlens`` give the layout of the read-out.
        """
        x = self.embedding(z) + self.encoding(**geometry)
        for block in self.layers:
            x = block(x, **geometry)
        with torch.autocast(x.device.type, enabled=False):
            h = self.head(self.norm(x.to(self.head.weight.dtype))).squeeze(-1)
            return self.readout(h, z, mask, cu_seqlens, include_atomref)

    def readout(self, h: Tensor, z: Tensor, mask: Optional[Tensor], cu_seqlens: Optional[Tensor],
                include_atomref: bool = True) -> Tensor:
        """Per-atom head outputs ``h`` (``[B, N]`` or ``[T]``, any float dtype) → molecule values ``[B]``.

        ``h·std + mean (+ atomref[z])`` and the molecule sum are computed in float64 (float32 on devices without
        float64, e.g. MPS); gradients flow back to ``h`` in its own dtype.
        """
        acc = torch.float32 if h.device.type == "mps" else torch.float64
        y = h.to(acc) * self.std.to(acc) + self.mean.to(acc)
        if include_atomref:
            y = y + self.atomref.to(acc)[z]
        return self.molecule_sum(y, mask, cu_seqlens)

    @staticmethod
    def molecule_sum(y: Tensor, mask: Optional[Tensor], cu_seqlens: Optional[Tensor]) -> Tensor:
        """Per-atom values ``y`` (``[B, N]`` padded or ``[T]`` packed) → per-molecule sums ``[B]`` over real atoms."""
        if cu_seqlens is None:
            return (y * mask).sum(-1)
        counts = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
        molecule = torch.repeat_interleave(torch.arange(counts.numel(), device=y.device), counts,
                                           output_size=y.shape[0])
        return torch.zeros(counts.numel(), dtype=y.dtype, device=y.device).index_add_(0, molecule, y)

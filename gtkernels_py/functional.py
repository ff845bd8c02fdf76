"""Functional reference of every gtkernels op, in plain eager PyTorch.

This file *is* the specification (docs/semantics.md §2): every backend is tested against it. It favours clarity over
speed and materialises every B×N×N (and B×N×N×h) intermediate on purpose.

Layouts
-------
padded : ``q, k, v`` are ``[B, N, H, D]``, ``pos`` is ``[B, N, 3]``, ``mask`` is a bool ``[B, N]``
         (True = real atom; ``None`` means all real).
packed : ``q, k, v`` are ``[T, H, D]``, ``pos`` is ``[T, 3]``, and ``cu_seqlens`` is an int32 ``[B + 1]``
         tensor of molecule boundaries (molecule b owns rows ``cu_seqlens[b]:cu_seqlens[b+1]``), as in
         FlashAttention's varlen API.

MLP parameters (ψω and φ) are passed as a flat sequence ``[W0, b0, W1, b1, ...]`` in ``nn.Linear`` layout
(``W`` is ``[out, in]``), first layer ``in = 1`` and last layer ``out = 1``.

Positions may be float64 while the features are float32: distances are computed in the dtype of ``pos`` and
rinv is then cast to the compute dtype (of ``q`` / of the φ weights). That keeps intra-molecule distances exact
for fragments placed 1e4 Å apart (the paper's augmentation), which float32 coordinates resolve only to ~1e-3 Å.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

#: Added to ‖p_i − p_j‖ before inversion, as in the paper's code.
DISTANCE_EPS = 1e-16


def mlp(x: Tensor, params: Sequence[Tensor], hidden_act: Callable[[Tensor], Tensor],
        out_act: Optional[Callable[[Tensor], Tensor]] = None) -> Tensor:
    """Apply Linear → act → ... → Linear (→ out_act) with weights ``params = [W0, b0, W1, b1, ...]``."""
    n_layers = len(params) // 2
    for layer in range(n_layers):
        x = F.linear(x, params[2 * layer], params[2 * layer + 1])
        if layer < n_layers - 1:
            x = hidden_act(x)
        elif out_act is not None:
            x = out_act(x)
    return x


def psi(rinv: Tensor, psi_params: Sequence[Tensor]) -> Tensor:
    """ψω: Linear(1→h) → ReLU → [Linear(h→h) → ReLU]×L → Linear(h→1), applied elementwise to ``rinv``."""
    return mlp(rinv.unsqueeze(-1), psi_params, F.relu).squeeze(-1)


def phi(rinv: Tensor, phi_params: Sequence[Tensor]) -> Tensor:
    """φ: Linear(1→h) → GELU → ... → Linear(h→1) → GELU (exact erf GELU), applied elementwise."""
    return mlp(rinv.unsqueeze(-1), phi_params, F.gelu, F.gelu).squeeze(-1)


def real_pairs(mask: Tensor, include_self: bool) -> Tensor:
    """Bool ``[B, N, N]``: both atoms real (and, unless ``include_self``, i ≠ j)."""
    pairs = mask[:, :, None] & mask[:, None, :]
    if not include_self:
        eye = torch.eye(mask.shape[1], dtype=torch.bool, device=mask.device)
        pairs = pairs & ~eye
    return pairs


def inverse_distances(pos: Tensor, mask: Tensor) -> Tensor:
    """rinv ``[B, N, N]`` from ``pos [B, N, 3]``: 1/(‖p_i − p_j‖ + 1e-16) for real i ≠ j (NaN where the
    distance is not finite), else 0.

    Excluded pairs get a dummy difference vector so that the norm's gradient stays finite there.
    """
    pairs = real_pairs(mask, include_self=False)
    diff = pos[:, :, None, :] - pos[:, None, :, :]
    diff = torch.where(pairs[..., None], diff, torch.ones_like(diff))
    r = torch.linalg.vector_norm(diff, dim=-1)
    # A non-finite coordinate (NaN or Inf, only with validate=False) makes rinv NaN, never 1/Inf = 0, so the
    # molecule's outputs are NaN rather than finite-looking (docs/semantics.md §2).
    rinv = torch.where(r < math.inf, 1.0 / (r + DISTANCE_EPS), torch.full_like(r, math.nan))
    return torch.where(pairs, rinv, torch.zeros_like(r))


def _full_mask(x: Tensor, mask: Optional[Tensor]) -> Tensor:
    if mask is None:
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    return mask


def _per_molecule(fn, cu_seqlens: Tensor, *tensors: Tensor) -> Tensor:
    """Run the padded ``fn`` on each molecule of a packed batch (as a batch of one) and concatenate."""
    bounds = cu_seqlens.tolist()
    outs = [fn(*(t[None, s:e] for t in tensors))[0] for s, e in zip(bounds[:-1], bounds[1:])]
    if not outs:
        return fn(*(t[None, :0] for t in tensors))[0]
    return torch.cat(outs, dim=0)


def geometric_attention(q: Tensor, k: Tensor, v: Tensor, pos: Tensor, psi_params: Sequence[Tensor],
                        mask: Optional[Tensor] = None, *, cu_seqlens: Optional[Tensor] = None,
                        scale: Optional[float] = None, dropout_p: float = 0.0) -> Tensor:
    """Geometric self-attention: O = (softmax(QKᵀ·scale, self and padding excluded) ⊙ ψω(rinv)²) V.

    Args:
        q, k, v: ``[B, N, H, D]`` (padded) or ``[T, H, D]`` (packed), float32/float64.
        pos: ``[B, N, 3]`` or ``[T, 3]`` positions in Å, float32 or float64 (any of the two with any q).
        psi_params: ψω weights ``[W0, b0, ..., Wn, bn]``, shared by every head.
        mask: bool ``[B, N]`` (padded layout only), True for real atoms.
        cu_seqlens: int32 ``[B + 1]`` (packed layout only).
        scale: softmax scale, default ``1/sqrt(D)``.
        dropout_p: dropout probability applied to the gated matrix A (training only).

    Returns:
        O with the shape and dtype of ``q``. Rows of padding atoms and atoms with no other real atom are 0.
    """
    if cu_seqlens is not None:
        return _per_molecule(
            lambda q_, k_, v_, p_: geometric_attention(q_, k_, v_, p_, psi_params, scale=scale,
                                                       dropout_p=dropout_p),
            cu_seqlens, q, k, v, pos)
    mask = _full_mask(q, mask)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    # Padding slots may hold anything (NaN, Inf): zero them, so that no 0·NaN reaches a real row, forward
    # (P @ V) or backward (the gradients of q, k, v, and, by the masked output, the upstream gradient).
    padding = ~mask[:, :, None, None]
    q, k, v = (t.masked_fill(padding, 0.0) for t in (q, k, v))

    gate = psi(inverse_distances(pos, mask).to(q.dtype), psi_params) ** 2   # [B, N, N]
    allowed = real_pairs(mask, include_self=False)[:, None]                 # [B, 1, N, N]
    scores = torch.einsum("bihd,bjhd->bhij", q, k) * scale                  # [B, H, N, N]
    scores = scores.masked_fill(~allowed, float("-inf"))
    # A row with no allowed key (padding, one-atom molecule) gets P = 0: give it finite scores so
    # softmax (and its gradient) stays NaN-free, then zero it with the mask.
    scores = scores.masked_fill(~allowed.any(-1, keepdim=True), 0.0)
    probs = torch.softmax(scores, dim=-1) * allowed
    gated = probs * gate[:, None]                                           # no renormalisation
    if dropout_p > 0.0:
        gated = F.dropout(gated, p=dropout_p)
    return torch.einsum("bhij,bjhd->bihd", gated, v).masked_fill(padding, 0.0)


def geometric_encoding(pos: Tensor, phi_params: Sequence[Tensor], mask: Optional[Tensor] = None, *,
                       cu_seqlens: Optional[Tensor] = None) -> Tensor:
    """Geometric positional encoding scalar s_i = Σ_j φ(rinv_ij) over real j, including j = i (rinv 0).

    Args:
        pos: ``[B, N, 3]`` (padded) or ``[T, 3]`` (packed) positions in Å.
        phi_params: φ weights ``[W0, b0, ..., Wn, bn]``.
        mask: bool ``[B, N]``; cu_seqlens: int32 ``[B + 1]``.

    Returns:
        s: ``[B, N]`` or ``[T]``, dtype of the φ weights; 0 for padding atoms.
    """
    if cu_seqlens is not None:
        return _per_molecule(lambda p_: geometric_encoding(p_, phi_params), cu_seqlens, pos)
    mask = _full_mask(pos, mask)
    values = phi(inverse_distances(pos, mask).to(phi_params[0].dtype), phi_params)  # [B, N, N]
    # masked_fill of the padding rows: their upstream gradient (maybe NaN) then never reaches φ's gradients
    return (values * real_pairs(mask, include_self=True)).sum(-1).masked_fill(~mask, 0.0)

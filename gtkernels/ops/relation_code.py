"""The per-pair graph code of R-MAT's relation vector: channels 0–13 of b_ij (bond 8 + hop 6) in one int16.

The fused op takes this code instead of 14 float channels (docs/semantics.md §6.4). Bit layout of a code c:

======  ==========================================================  ========================
bits    field                                                       b_ij channels
======  ==========================================================  ========================
0       mask flag (0 in the released featuriser)                    0
1–3     bond type t: 0 none, 1 single, 2 aromatic, 3 double,        1–4 (channel t when t ≥ 1)
        4 triple
4       aromatic                                                    5
5       conjugated                                                  6
6       in ring                                                     7
7–9     hop bucket h: 0–3 hop count, 4 four or more, 5 no path      8 + h
10–15   zero
======  ==========================================================  ========================

The layout's constants live in :mod:`gtkernels.contract` (and csrc/contract.h, for the kernels). A valid code
is in [0, 1024) with t ≤ 4 and h ≤ 5: 5 · 8 · 6 · 2 = 480 valid codes. Decoding sets each channel by a
comparison of its field, so an out-of-range field (t > 4, h > 5; rejected by the checks) gives all-zero channels
for that field, never an out-of-bounds read.

Packed layout: molecule b's n_b × n_b codes, row-major (query atom i, key atom j), one after the other:
``[P]`` with P = Σ_b n_b² (:func:`pack_graph_code`); padded: ``[B, N, N]``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ..contract import (BOND_CHANNELS, BOND_TYPE_SHIFT, BOND_TYPES, CODE_LIMIT, FIELD_MASK, FLAG_BITS,
                        GRAPH_CHANNELS, HOP_BUCKETS, HOP_SHIFT, MASK_FLAG_BIT, MAX_HOP, NO_PATH)

__all__ = ["CODE_DTYPE", "GRAPH_CHANNELS", "CODE_LIMIT", "encode_graph_relation", "check_graph_code",
           "decode_graph_relation", "pair_index", "pack_graph_code", "unpack_graph_code"]

#: dtype of the graph code.
CODE_DTYPE = torch.int16


def _shape(t: Tensor) -> Tuple[int, ...]:
    return tuple(t.shape)


def encode_graph_relation(bond_features: Tensor, hop_counts: Tensor) -> Tensor:
    """The int16 code ``[...]`` of bond channels ``bond_features [..., 8]`` and hop counts ``hop_counts [...]``.

    Args:
        bond_features: the released bond channels (``gtkernels_py.relation_features``' ``bond``), every value
            0 or 1, at most one of the bond-type channels 1–4 set; float, integer or bool.
        hop_counts: integer shortest-path lengths, negative where there is no path
            (``gtkernels_py.hop_counts``); counts of ``MAX_HOP`` and more share one bucket.

    ``decode_graph_relation(encode_graph_relation(bond, hops))`` equals
    ``cat([bond, hop_one_hot(hops)], -1)``. Raises ``ValueError`` naming the argument for anything else.
    """
    if not isinstance(bond_features, Tensor):
        raise TypeError(f"bond_features must be a torch.Tensor, got {type(bond_features).__name__}")
    if not isinstance(hop_counts, Tensor):
        raise TypeError(f"hop_counts must be a torch.Tensor, got {type(hop_counts).__name__}")
    if bond_features.dim() < 1 or bond_features.shape[-1] != BOND_CHANNELS:
        raise ValueError(f"bond_features must end with {BOND_CHANNELS} bond channels, got shape "
                         f"{_shape(bond_features)}")
    if hop_counts.is_floating_point() or hop_counts.is_complex() or hop_counts.dtype == torch.bool:
        raise ValueError(f"hop_counts must be an integer tensor (negative = no path), got {hop_counts.dtype}")
    if _shape(hop_counts) != _shape(bond_features)[:-1]:
        raise ValueError(f"hop_counts must have shape {_shape(bond_features)[:-1]} to match bond_features "
                         f"{_shape(bond_features)}, got {_shape(hop_counts)}")
    if hop_counts.device != bond_features.device:
        raise ValueError(f"hop_counts is on {hop_counts.device} but bond_features is on {bond_features.device}")
    bits = bond_features.detach()
    binary = (bits == 0) | (bits == 1)
    if not bool(binary.all()):
        where = [int(i) for i in torch.nonzero(~binary)[0]]
        raise ValueError(f"bond_features must hold 0 or 1, got {bits[tuple(where)].item()} at index {where}")
    bits = bits.to(torch.int64)
    types = bits[..., 1:1 + BOND_TYPES]
    several = types.sum(-1) > 1
    if bool(several.any()):
        where = [int(i) for i in torch.nonzero(several)[0]]
        raise ValueError(f"bond_features channels 1–{BOND_TYPES} are the bond-type one-hot: at most one may be 1, "
                         f"got {types[tuple(where)].tolist()} at index {where}")
    bond_type = (types * torch.arange(1, BOND_TYPES + 1, device=bits.device)).sum(-1)
    hops = hop_counts.to(torch.int64)
    bucket = torch.where(hops < 0, torch.full_like(hops, NO_PATH), hops.clamp(max=MAX_HOP))
    code = bits[..., 0] << MASK_FLAG_BIT | bond_type << BOND_TYPE_SHIFT | bucket << HOP_SHIFT
    for channel, bit in enumerate(FLAG_BITS, start=1 + BOND_TYPES):
        code = code | bits[..., channel] << bit
    return code.to(CODE_DTYPE)


def check_graph_code(name: str, code: Tensor, where: Optional[Tensor] = None) -> None:
    """Every code of ``code`` (those under the bool ``where`` when given) is valid; reads values (a host sync)."""
    full = torch.ones(code.shape, dtype=torch.bool, device=code.device) if where is None else where
    values = code.long()[full]
    field_type = (values >> BOND_TYPE_SHIFT) & FIELD_MASK
    field_hop = (values >> HOP_SHIFT) & FIELD_MASK
    bad = (values < 0) | (values >= CODE_LIMIT) | (field_type > BOND_TYPES) | (field_hop > NO_PATH)
    if bool(bad.any()):
        first = int(torch.nonzero(bad)[0])
        index = [int(i) for i in torch.nonzero(full)[first]]
        raise ValueError(f"{name} holds an invalid graph code {int(values[first])} at index {index}: a code is "
                         f"below {CODE_LIMIT}, with bond type (bits 1–3) <= {BOND_TYPES} and hop bucket (bits 7–9) "
                         f"<= {NO_PATH} (gtkernels.ops.relation_code)")


def decode_graph_relation(code: Tensor, dtype: Optional[torch.dtype] = None, validate: bool = True) -> Tensor:
    """Channels 0–13 of b_ij, ``[..., 14]`` float (``dtype``, default torch's), from the int16 ``code [...]``.

    ``validate`` (outside ``torch.compile``) rejects invalid codes with a ``ValueError``; unchecked, an
    out-of-range field decodes to zero channels.
    """
    if not isinstance(code, Tensor):
        raise TypeError(f"code must be a torch.Tensor, got {type(code).__name__}")
    if code.dtype != CODE_DTYPE:
        raise ValueError(f"code must be a {CODE_DTYPE} graph code (encode_graph_relation), got {code.dtype}")
    if validate and not torch.compiler.is_compiling():
        check_graph_code("code", code)
    c = code.to(torch.int32)
    bond_type = (c >> BOND_TYPE_SHIFT) & FIELD_MASK
    bucket = (c >> HOP_SHIFT) & FIELD_MASK
    flags = [(c >> bit) & 1 for bit in FLAG_BITS]
    types = torch.arange(1, BOND_TYPES + 1, device=code.device, dtype=torch.int32)
    buckets = torch.arange(HOP_BUCKETS, device=code.device, dtype=torch.int32)
    channels = torch.cat([((c >> MASK_FLAG_BIT) & 1)[..., None], bond_type[..., None] == types,
                          torch.stack(flags, -1), bucket[..., None] == buckets], dim=-1)
    return channels.to(torch.get_default_dtype() if dtype is None else dtype)


def pair_index(seg: Tensor, n_max: int) -> Tuple[Tensor, Tensor]:
    """For a packed batch with row boundaries ``seg [B + 1]`` (int64) and molecules of at most ``n_max`` atoms:
    ``(index [B, n_max, n_max], real [B, n_max, n_max])``, the position of pair (b, i, j) in the packed ``[P]``
    layout and whether the pair exists (i, j < n_b; ``index`` is 0 where not)."""
    counts = seg[1:] - seg[:-1]
    squares = counts * counts
    offset = torch.cumsum(squares, 0) - squares
    slot = torch.arange(n_max, device=seg.device)
    real = (slot[None, :, None] < counts[:, None, None]) & (slot[None, None, :] < counts[:, None, None])
    index = offset[:, None, None] + slot[None, :, None] * counts[:, None, None] + slot[None, None, :]
    return index.masked_fill(~real, 0), real


def pack_graph_code(code: Tensor, cu_seqlens: Tensor) -> Tensor:
    """Padded ``code [B, N, N]`` → packed ``[P]``: each molecule's leading n_b × n_b block, row-major, with
    n_b from ``cu_seqlens [B + 1]`` (n_b ≤ N)."""
    seg = cu_seqlens.to(torch.int64)
    if code.dim() != 3 or code.shape[1] != code.shape[2] or code.shape[0] != seg.numel() - 1:
        raise ValueError(f"code must be [B, N, N] with B = {seg.numel() - 1} (cu_seqlens), got {_shape(code)}")
    _, real = pair_index(seg, code.shape[1])
    return code[real]


def unpack_graph_code(code: Tensor, seg: Tensor, n_max: int) -> Tensor:
    """Packed ``code [P]`` → padded ``[B, n_max, n_max]`` (0 on pairs with a padding slot), ``seg [B + 1]``."""
    index, real = pair_index(seg, n_max)
    if code.numel() == 0:
        return torch.zeros(index.shape, dtype=code.dtype, device=code.device)
    return code[index].masked_fill(~real, 0)

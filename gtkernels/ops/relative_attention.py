"""Public R-MAT relative attention op with backend dispatch (padded or packed layout), docs/semantics.md §6."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

import gtkernels_py
from gtkernels_py.relative_attention import DUMMY_DISTANCE, distance_basis
from .._backends import resolve_relative_backend
from . import registry, validation
from .geometry import BatchGeometry, as_geometry, check_rows, rows_of
from .relation_code import CODE_DTYPE, GRAPH_CHANNELS, check_graph_code, decode_graph_relation, unpack_graph_code
from .validation import check_positions, check_qkv, check_same, check_tensor


def relative_attention(q: Tensor, k: Tensor, v: Tensor, pos: Union[Tensor, BatchGeometry], graph_code: Tensor,
                       phi_k_params: Sequence[Tensor], phi_v_params: Sequence[Tensor],
                       mask: Optional[Tensor] = None, *, dummy: Optional[Tensor] = None,
                       cu_seqlens: Optional[Tensor] = None, max_seqlen: Optional[int] = None,
                       u: Optional[Tensor] = None, v_rel: Optional[Tensor] = None, dropout_p: float = 0.0,
                       phi_dropout_p: float = 0.0, backend: str = "auto", validate: bool = True) -> Tensor:
    """R-MAT relative self-attention of every head, z ``[..., H, d_k]`` (docs/semantics.md §6.3–6.4).

    :func:`gtkernels_py.relative_attention` with b_ij built inside the op: channels 0–13 from ``graph_code``,
    the distance basis (channels 14…) from ``pos``.

    Args:
        q, k, v: ``[B, N, H, d_k]`` with optional bool ``mask [B, N]`` (padded), or ``[T, H, d_k]`` with int32
            ``cu_seqlens [B + 1]`` (packed).
        pos: ``[B, N, 3]`` / ``[T, 3]`` in Å, float32 or float64 (the basis is computed in pos's dtype); or a
            :class:`~gtkernels.ops.geometry.BatchGeometry` holding the layout (then mask, cu_seqlens and
            max_seqlen stay None; prepare it with ``validate=False`` when a dummy node's position is arbitrary).
        graph_code: int16 per-pair code of the bond and hop channels (:mod:`gtkernels.ops.relation_code`):
            ``[B, N, N]`` (query atom i, key atom j) padded, ``[P]`` packed (molecule after molecule, each
            n_b × n_b block row-major, P = Σ n_b²; :func:`~gtkernels.ops.relation_code.pack_graph_code`).
        phi_k_params, phi_v_params: φ_K and φ_V as ``[W1 [d_hidden, C], c1, W2 [H·d_k, d_hidden], c2]``
            (``RelationMLP.params()``), C = 14 + the number of distance-basis functions (46 released).
        dummy: bool, shaped like ``mask`` (``[B, N]``; ``[T]`` packed): True on R-MAT's dummy nodes (the
            released featuriser's atom 0 of every molecule; a dummy node is a real atom of ``mask``). A dummy
            node has no position: its pairs, its own diagonal included, get distance basis 0 (the released
            distance 10⁶ Å), and its ``pos`` may hold anything. Its graph code is the caller's (no bond; hop
            "no path" to the others, 0 to itself). None = no dummy node.
        u, v_rel: ``[H, d_k]``, the released ``relative_u`` and ``relative_v``; None = 0.
        dropout_p, phi_dropout_p: dropout on α and on φ's hidden layer (training; 0 in eval).
        max_seqlen: packed only: the largest molecule's atom count, known on the host; None reads it from
            cu_seqlens (a host sync).
        backend: ``"auto"`` (without dropout ``"cpu"`` for float32/float64 CPU tensors and ``"triton"`` for CUDA
            tensors, else ``"reference"``), ``"reference"``, ``"cpu"`` (the fused C++ kernels) or ``"triton"``
            (the fused Triton kernels; CPU tensors under ``TRITON_INTERPRET=1``). The fused kernels implement no
            dropout and compute distances and the basis in float64. The ``"cuda"`` kernels of this op are not
            built yet and raise ``NotImplementedError``.
            The fused kernels give u and φ_K's output bias c2ᴷ a gradient of exactly 0 (their logit terms are
            constant along j, which the softmax cancels; the reference gives rounding noise).
        validate: the data-dependent checks (finite positions and atoms ≥ 1e-3 Å apart, dummy nodes exempt;
            cu_seqlens contents; valid codes on real pairs; P = Σ n_b²). They cost a host sync and are skipped
            under ``torch.compile``.

    Padding slots of q, k, v, pos and the codes of pairs with a padded atom may hold anything (NaN included for
    the floats): they change no real row's output and no gradient. Returns z shaped like ``q``, in q's dtype.
    """
    check_qkv(q, k, v, pos)
    geom = as_geometry(pos, mask, cu_seqlens, max_seqlen, validate=False)
    check_rows("q", q, geom, 2)
    check_positions(geom.positions, "q", q)
    heads, d_k = q.shape[-2], q.shape[-1]
    channels = _check_phi("phi_k_params", phi_k_params, heads * d_k, q)
    if _check_phi("phi_v_params", phi_v_params, heads * d_k, q) != channels:
        raise ValueError(f"phi_k_params and phi_v_params must read one relation width, got C = {channels} and "
                         f"{phi_v_params[0].shape[1]}")
    for name, t in (("u", u), ("v_rel", v_rel)):
        if t is not None:
            check_tensor(name, t, (2,))
            if tuple(t.shape) != (heads, d_k):
                raise ValueError(f"{name} must have shape (H, d_k) = {(heads, d_k)}, got {tuple(t.shape)}")
            check_same("q", q, **{name: t})
    if dummy is not None:
        check_tensor("dummy", dummy)
        if dummy.dtype != torch.bool:
            raise TypeError(f"dummy must be a bool tensor (True = dummy node), got {dummy.dtype}")
        if tuple(dummy.shape) != geom.rows_shape:
            raise ValueError(f"dummy must have shape {geom.rows_shape} (one flag per atom), got {tuple(dummy.shape)}")
        check_same("q", q, dummy=dummy)
    check_tensor("graph_code", graph_code)
    if graph_code.dtype != CODE_DTYPE:
        raise TypeError(f"graph_code must be a {CODE_DTYPE} code (gtkernels.ops.relation_code."
                        f"encode_graph_relation), got {graph_code.dtype}")
    want = geom.rows_shape + geom.rows_shape[-1:] if geom.padded else None
    if (geom.padded and tuple(graph_code.shape) != want) or (not geom.padded and graph_code.dim() != 1):
        raise ValueError(f"graph_code must have shape {want if geom.padded else '[P]'} "
                         f"({'[B, N, N] padded' if geom.padded else 'packed, P = Σ n_b²'}), "
                         f"got {tuple(graph_code.shape)}")
    check_same("q", q, graph_code=graph_code)
    for name, p in (("dropout_p", dropout_p), ("phi_dropout_p", phi_dropout_p)):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {p}")
    backend = resolve_relative_backend(backend, q.device, q.dtype, dropout_p, phi_dropout_p)
    if validate and not torch.compiler.is_compiling():
        check_relation_values(geom, graph_code, dummy)

    if backend != "reference":
        out, _ = registry.relative_attention_fwd(
            rows_of(q, geom), rows_of(k, geom), rows_of(v, geom), geom.pos_rows, graph_code.reshape(-1).contiguous(),
            [p.contiguous() for p in phi_k_params], [p.contiguous() for p in phi_v_params], u,
            None if v_rel is None else v_rel.contiguous(), geom.seg, geom.valid,
            None if dummy is None else dummy.reshape(-1).contiguous(), geom.max_atoms, backend)
        return out.view(q.shape)

    if geom.padded:
        return _reference(q, k, v, geom.positions, graph_code, phi_k_params, phi_v_params, geom.mask, dummy,
                          channels - GRAPH_CHANNELS, u, v_rel, dropout_p, phi_dropout_p)
    seg, n_max, rows = geom.seg, geom.max_atoms, q.shape[0]
    counts = seg[1:] - seg[:-1]
    molecule = torch.repeat_interleave(torch.arange(counts.numel(), device=seg.device), counts, output_size=rows)
    slot = torch.arange(rows, device=seg.device) - seg[molecule]
    where = (molecule, slot)
    batch = counts.numel()

    def padded(x: Tensor, fill=0.0) -> Tensor:
        return torch.full((batch, n_max) + tuple(x.shape[1:]), fill, dtype=x.dtype,
                          device=x.device).index_put(where, x)

    mask_p = padded(torch.ones(rows, dtype=torch.bool, device=q.device), False)
    dummy_p = None if dummy is None else padded(dummy, False)
    z = _reference(padded(q), padded(k), padded(v), padded(geom.positions), unpack_graph_code(graph_code, seg, n_max),
                   phi_k_params, phi_v_params, mask_p, dummy_p, channels - GRAPH_CHANNELS, u, v_rel, dropout_p,
                   phi_dropout_p)
    return z[where]


def _check_phi(name: str, params: Sequence[Tensor], width: int, q: Tensor) -> int:
    """``params = [W1 [d_hidden, C], c1 [d_hidden], W2 [width, d_hidden], c2 [width]]``; returns C."""
    if not isinstance(params, (list, tuple)) or len(params) != 4:
        raise ValueError(f"{name} must be a list [W1, c1, W2, c2] (two nn.Linear weights and biases), got "
                         f"{type(params).__name__} of length {len(params) if hasattr(params, '__len__') else '?'}")
    for index, (t, dims) in enumerate(zip(params, (2, 1, 2, 1))):
        check_tensor(f"{name}[{index}]", t, (dims,))
        check_same("q", q, **{f"{name}[{index}]": t})
    w1, c1, w2, c2 = params
    hidden, channels = w1.shape
    if channels <= GRAPH_CHANNELS:
        raise ValueError(f"{name}[0] must read C = {GRAPH_CHANNELS} graph channels + at least one distance-basis "
                         f"channel, got shape {tuple(w1.shape)}")
    if tuple(c1.shape) != (hidden,) or tuple(w2.shape) != (width, hidden) or tuple(c2.shape) != (width,):
        raise ValueError(f"{name}: W1 {tuple(w1.shape)}, c1 {tuple(c1.shape)}, W2 {tuple(w2.shape)}, c2 "
                         f"{tuple(c2.shape)} do not chain to H·d_k = {width} (want c1 [{hidden}], "
                         f"W2 [{width}, {hidden}], c2 [{width}])")
    return channels


def check_relation_values(geom: BatchGeometry, graph_code: Tensor, dummy: Optional[Tensor]) -> None:
    """The data-dependent checks (host sync): positions and cu_seqlens, then the codes of real pairs."""
    validation.check_values(geom.positions, geom.mask, geom.cu_seqlens, exempt=dummy)
    if geom.padded:
        pairs = None if geom.mask is None else geom.mask[:, :, None] & geom.mask[:, None, :]
        check_graph_code("graph_code", graph_code, pairs)
        return
    counts = geom.seg[1:] - geom.seg[:-1]
    largest = int(counts.max()) if counts.numel() else 0
    if largest > geom.max_atoms:
        raise ValueError(f"max_seqlen = {geom.max_atoms} but the largest molecule of cu_seqlens has {largest} atoms")
    total = int((counts * counts).sum())
    if graph_code.shape[0] != total:
        raise ValueError(f"graph_code must have P = Σ n_b² = {total} packed pair codes for cu_seqlens, got "
                         f"{graph_code.shape[0]}")
    check_graph_code("graph_code", graph_code)


def relation_tensor(pos: Tensor, graph_code: Tensor, mask: Optional[Tensor], dummy: Optional[Tensor],
                    channels: int, dtype: torch.dtype) -> Tensor:
    """b ``[B, N, N, channels]`` in ``dtype``, materialised: [decoded ``graph_code [B, N, N]`` | distance basis of
    ``pos [B, N, 3]``] (docs/semantics.md §6.2, §6.4); b = 0 on pairs with a padded atom (``mask [B, N]``), basis
    0 on every pair with a dummy node (``dummy [B, N]``). What the fused kernels never write; the reference's
    and the eager model's input."""
    batch, n = pos.shape[:2]
    real = torch.ones(batch, n, dtype=torch.bool, device=pos.device) if mask is None else mask
    located = real if dummy is None else real & ~dummy                # atoms with a position
    pos = pos.masked_fill(~located[..., None], 0.0)
    diff = pos[:, :, None, :] - pos[:, None, :, :]
    squared = (diff * diff).sum(-1)
    eye = torch.eye(n, dtype=torch.bool, device=pos.device)
    measured = located[:, :, None] & located[:, None, :] & ~eye
    # sqrt only where measured (elsewhere of 1), so its gradient stays finite on diagonals and dummy pairs.
    dist = torch.where(measured, torch.where(measured, squared, 1.0).sqrt(),
                       torch.where(eye & located[:, :, None], 0.0, DUMMY_DISTANCE))
    basis = distance_basis(dist, channels - GRAPH_CHANNELS).to(dtype)
    relation = torch.cat([decode_graph_relation(graph_code, dtype, validate=False), basis], dim=-1)
    if mask is not None:
        relation = relation.masked_fill(~(mask[:, :, None] & mask[:, None, :])[..., None], 0.0)
    return relation


def _reference(q: Tensor, k: Tensor, v: Tensor, pos: Tensor, graph_code: Tensor, phi_k_params, phi_v_params,
               mask: Optional[Tensor], dummy: Optional[Tensor], num_radial: int, u, v_rel, dropout_p: float,
               phi_dropout_p: float) -> Tensor:
    """The spec on a padded batch: b_ij = [decoded code | distance basis of pos] (b = 0 on padded pairs)."""
    relation = relation_tensor(pos, graph_code, mask, dummy, GRAPH_CHANNELS + num_radial, q.dtype)
    return gtkernels_py.relative_attention(q, k, v, relation, phi_k_params, phi_v_params, mask, u=u, v_rel=v_rel,
                                           dropout_p=dropout_p, phi_dropout_p=phi_dropout_p)

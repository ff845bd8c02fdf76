"""Input checks of the public ops: wrong input raises a ``ValueError``/``TypeError`` naming the argument and its
shape, never a crash or a silently wrong answer.

Shape/dtype/device checks are cheap and always on. The data-dependent checks (finite positions, two real atoms
closer than :data:`MIN_DISTANCE`, ``cu_seqlens`` contents) read tensor values (a host sync) and run only with
``validate=True`` outside ``torch.compile``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from .layout import packed_to_padded_index

#: Two real atoms of one molecule closer than this (Å) are rejected: 1/r would blow up ψω and φ.
MIN_DISTANCE = 1e-3
#: The kernels index rows with ``cu_seqlens`` values, which are int32 in the FlashAttention convention.
MAX_ROWS = 2**31 - 1
FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _shape(t: Tensor) -> str:
    return str(tuple(t.shape))


def check_tensor(name: str, t, dims=None) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dims is not None and t.dim() not in dims:
        want = " or ".join(str(d) for d in dims)
        raise ValueError(f"{name} must have {want} dimensions, got shape {_shape(t)}")


def check_same(ref_name: str, ref: Tensor, **others: Optional[Tensor]) -> None:
    """Every tensor in ``others`` is on ``ref``'s device (and, for floating ones, of its dtype)."""
    for name, t in others.items():
        if t is None:
            continue
        if t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; move them to one device")
        if t.is_floating_point() and t.dtype != ref.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} has dtype {ref.dtype}; use one dtype")


def check_qkv(q: Tensor, k: Tensor, v: Tensor, pos) -> None:
    """q, k, v: one floating shape ``[B, N, H, D]`` / ``[T, H, D]`` on one device and dtype; ``pos`` (a tensor;
    a BatchGeometry is checked by its own layout) ``[B, N, 3]`` / ``[T, 3]`` to match."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, (3, 4))
    if q.dtype not in FLOATS:
        raise TypeError(f"q must be a floating tensor, got {q.dtype}")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must have one shape, got q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    check_same("q", q, k=k, v=v)
    if isinstance(pos, Tensor) and tuple(pos.shape) != tuple(q.shape[:-2]) + (3,):
        raise ValueError(f"pos must have shape {tuple(q.shape[:-2]) + (3,)} to match q {tuple(q.shape)}, "
                         f"got {tuple(pos.shape)}")


def check_positions(pos: Tensor, ref_name: str, ref: Tensor) -> None:
    """``pos`` is float32 or float64 (independently of the features: float64 keeps far fragments exact)."""
    if pos.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"pos must be float32 or float64, got {pos.dtype}")
    if pos.device != ref.device:
        raise ValueError(f"pos is on {pos.device} but {ref_name} is on {ref.device}; move them to one device")


def check_mlp_params(name: str, params: Sequence[Tensor], ref_name: str, ref: Tensor) -> None:
    """``params = [W0, b0, ..., Wn, bn]`` in nn.Linear layout, 1 input and 1 output, widths chained, each on
    ``ref``'s device with its dtype."""
    if not isinstance(params, (list, tuple)) or len(params) < 2 or len(params) % 2:
        raise ValueError(f"{name} must be a list [W0, b0, W1, b1, ...] of nn.Linear weights and biases, "
                         f"got {type(params).__name__} of length {len(params) if hasattr(params, '__len__') else '?'}")
    width = 1
    for layer in range(len(params) // 2):
        w, b = params[2 * layer], params[2 * layer + 1]
        check_tensor(f"{name}[{2 * layer}]", w, (2,))
        check_tensor(f"{name}[{2 * layer + 1}]", b, (1,))
        if w.shape[1] != width or b.shape[0] != w.shape[0]:
            raise ValueError(f"{name} layer {layer}: weight {_shape(w)} and bias {_shape(b)} do not chain from "
                             f"width {width} (weight must be [out, {width}], bias [out])")
        width = w.shape[0]
        check_same(ref_name, ref, **{f"{name}[{2 * layer}]": w, f"{name}[{2 * layer + 1}]": b})
    if width != 1:
        raise ValueError(f"{name}: the last layer must have 1 output, got {width}")


def check_layout(pos: Tensor, rows_shape, mask: Optional[Tensor], cu_seqlens: Optional[Tensor]) -> None:
    """``rows_shape`` is ``[B, N]`` (padded) or ``[T]`` (packed): mask / cu_seqlens must agree with it."""
    if mask is not None and cu_seqlens is not None:
        raise ValueError("pass either mask (padded layout) or cu_seqlens (packed layout), not both")
    if cu_seqlens is None:
        if len(rows_shape) != 2:
            raise ValueError(f"without cu_seqlens the inputs must be padded [B, N, ...]; got leading shape "
                             f"{tuple(rows_shape)} (pass cu_seqlens for packed [T, ...] inputs)")
        if mask is not None:
            check_tensor("mask", mask)
            if mask.dtype != torch.bool:
                raise TypeError(f"mask must be a bool tensor (True = real atom), got {mask.dtype}")
            if tuple(mask.shape) != tuple(rows_shape):
                raise ValueError(f"mask has shape {_shape(mask)} but the inputs are [B, N] = {tuple(rows_shape)}")
            check_same("pos", pos, mask=mask)
    else:
        check_tensor("cu_seqlens", cu_seqlens, (1,))
        if len(rows_shape) != 1:
            raise ValueError(f"with cu_seqlens the inputs must be packed [T, ...]; got leading shape "
                             f"{tuple(rows_shape)}")
        if cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"cu_seqlens must be int32 (or int64), got {cu_seqlens.dtype}")
        if cu_seqlens.numel() < 1:
            raise ValueError("cu_seqlens must have B + 1 >= 1 entries, got an empty tensor")
        check_same("pos", pos, cu_seqlens=cu_seqlens)
        if rows_shape[0] > MAX_ROWS:
            raise ValueError(f"{rows_shape[0]} packed rows overflow int32 cu_seqlens (max {MAX_ROWS}); split the batch")


def check_values(pos: Tensor, mask: Optional[Tensor], cu_seqlens: Optional[Tensor],
                 exempt: Optional[Tensor] = None) -> None:
    """Data-dependent checks (host sync): cu_seqlens contents, finite positions, no two real atoms too close.

    ``exempt``: bool, shaped like ``pos`` without its last dimension: rows that have no position (R-MAT's dummy
    node), left out of the position checks."""
    if cu_seqlens is not None:
        cs = cu_seqlens.long()
        total = pos.shape[0]
        if int(cs[0]) != 0 or int(cs[-1]) != total:
            raise ValueError(f"cu_seqlens must start at 0 and end at the number of packed rows ({total}), got "
                             f"{int(cs[0])} .. {int(cs[-1])}")
        if cs.numel() > 1 and bool((cs[1:] < cs[:-1]).any()):
            bad = int(torch.nonzero(cs[1:] < cs[:-1])[0])
            raise ValueError(f"cu_seqlens must be non-decreasing; cu_seqlens[{bad + 1}] < cu_seqlens[{bad}]")
        molecule, slot, n_max = packed_to_padded_index(cu_seqlens)
        padded = pos.new_zeros(cs.numel() - 1, n_max, 3)
        padded[molecule, slot] = pos.detach()
        real = torch.zeros(cs.numel() - 1, n_max, dtype=torch.bool, device=pos.device)
        real[molecule, slot] = True if exempt is None else ~exempt
        pos, mask = padded, real
    elif exempt is not None:
        mask = ~exempt if mask is None else mask & ~exempt
    pos = pos.detach()
    if mask is None:
        mask = torch.ones(pos.shape[:2], dtype=torch.bool, device=pos.device)
    finite = torch.isfinite(pos).all(-1) | ~mask
    if not bool(finite.all()):
        b, i = (int(x) for x in torch.nonzero(~finite)[0])
        raise ValueError(f"pos contains a non-finite coordinate at molecule {b}, atom {i}: {pos[b, i].tolist()}")
    _check_min_distance(pos, mask)


def _check_min_distance(pos: Tensor, mask: Tensor, budget: int = 1 << 24) -> None:
    """Pairwise distances of real atoms, in molecule chunks of at most ``budget`` pairs (no B×N×N at once)."""
    batch, n = mask.shape
    if n < 2:
        return
    step = max(1, budget // (n * n))
    eye = torch.eye(n, dtype=torch.bool, device=pos.device)
    for start in range(0, batch, step):
        p, m = pos[start:start + step], mask[start:start + step]
        d = torch.cdist(p.double(), p.double())
        pair = m[:, :, None] & m[:, None, :] & ~eye
        d = d.masked_fill(~pair, float("inf"))
        close = d < MIN_DISTANCE
        if bool(close.any()):
            b, i, j = (int(x) for x in torch.nonzero(close)[0])
            raise ValueError(f"atoms {i} and {j} of molecule {start + b} are {float(d[b, i, j]):.3g} Å apart "
                             f"(< {MIN_DISTANCE} Å): duplicated or collapsed atoms; pass validate=False to skip "
                             "this check")

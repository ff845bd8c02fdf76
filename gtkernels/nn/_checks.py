"""Input checks shared by the fused modules."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..ops.geometry import BatchGeometry
from ..ops.validation import check_tensor


def check_features(x: Tensor, d_model: int, pos, cu_seqlens: Optional[Tensor]) -> None:
    """``x`` is ``[B, N, d_model]`` (padded) or ``[T, d_model]`` (packed, with cu_seqlens), matching ``pos``
    (a positions tensor or a :class:`BatchGeometry`)."""
    packed = cu_seqlens is not None or (isinstance(pos, BatchGeometry) and not pos.padded)
    check_tensor("x", x, (2,) if packed else (3,))
    if x.shape[-1] != d_model:
        raise ValueError(f"x must end with d_model = {d_model} features, got shape {tuple(x.shape)}")
    lead = pos.rows_shape if isinstance(pos, BatchGeometry) else None
    if lead is None:
        check_tensor("pos", pos)
        if tuple(pos.shape) != tuple(x.shape[:-1]) + (3,):
            raise ValueError(f"pos must have shape {tuple(x.shape[:-1]) + (3,)} to match x {tuple(x.shape)}, "
                             f"got {tuple(pos.shape)}")
    elif tuple(x.shape[:-1]) != tuple(lead):
        raise ValueError(f"x must have shape {tuple(lead) + (d_model,)} to match the batch geometry, got "
                         f"{tuple(x.shape)}")


def check_weights_dtype(x: Tensor, weight: Tensor, module: str) -> None:
    """``x`` has the dtype of ``module``'s weights, as ``nn.Linear`` needs (under ``torch.autocast`` any float
    but float64 passes: autocast casts it)."""
    if x.dtype == weight.dtype:
        return
    if x.is_floating_point() and x.dtype != torch.float64 and torch.is_autocast_enabled(x.device.type):
        return
    raise TypeError(f"x has dtype {x.dtype} but {module}'s weights are {weight.dtype}: convert the input "
                    f"(x.to({weight.dtype})) or the module (module.to({x.dtype}))")


def check_atoms(z: Tensor, pos, cu_seqlens: Optional[Tensor], max_z: int, validate: bool) -> Tensor:
    """The model's atom inputs: integer ``z [B, N]`` (padded, 0 = padding) with ``pos [B, N, 3]``, or ``z [T]``
    with ``pos [T, 3]`` and ``cu_seqlens``. With ``validate`` (one host sync, skipped under ``torch.compile``)
    every atomic number must have a row of the embedding (``0 <= z < max_z``). Returns ``z`` as int64 (so uint8,
    the dtype of :class:`gtkernels.data.Molecule`'s ``z``, works as an index, not as a boolean mask)."""
    check_tensor("z", z)
    if z.is_floating_point() or z.is_complex() or z.dtype == torch.bool:
        raise TypeError(f"z must be an integer tensor of atomic numbers (int64, int32, uint8, ...), got {z.dtype}")
    check_tensor("pos", pos)
    if cu_seqlens is None and z.dim() == 1:
        raise ValueError(f"z has shape {tuple(z.shape)}: a 1-D z is the packed layout and needs cu_seqlens [B + 1] "
                         f"(int32 molecule boundaries, e.g. from gtkernels.data.pack); or pass a padded batch "
                         f"z [B, N] with pos [B, N, 3] (z[None], pos[None] for one molecule)")
    if cu_seqlens is None and z.dim() != 2:
        raise ValueError(f"z must be [B, N] (padded, 0 = padding) or [T] with cu_seqlens (packed), got shape "
                         f"{tuple(z.shape)}")
    if cu_seqlens is not None and z.dim() != 1:
        raise ValueError(f"with cu_seqlens, z must be packed [T], got shape {tuple(z.shape)} (for a padded [B, N] "
                         f"batch pass a mask or nothing instead of cu_seqlens)")
    want = tuple(z.shape) + (3,)
    if tuple(pos.shape) != want:
        raise ValueError(f"pos must have shape {want} to match z {tuple(z.shape)}, got {tuple(pos.shape)}")
    if z.device != pos.device:
        raise ValueError(f"z is on {z.device} but pos is on {pos.device}; move them to one device")
    if validate and z.numel() and not torch.compiler.is_compiling():
        lo, hi = (int(v) for v in torch.aminmax(z.long()))
        if lo < 0 or hi >= max_z:
            bad = lo if lo < 0 else hi
            where = [int(i) for i in torch.nonzero(z == bad)[0]]
            from ..data.elements import SYMBOLS
            name = f"{bad} ({SYMBOLS[bad]})" if bad in SYMBOLS else str(bad)
            at = (f"molecule {where[0]}, atom {where[1]}" if len(where) == 2 else f"row {where[0]}")
            if bad < 0:
                raise ValueError(f"z contains {bad} at {at} (0-based): atomic numbers are >= 1 (0 = padding)")
            raise ValueError(f"z contains atomic number {name} at {at} (0-based), but this model's embedding has "
                             f"rows for atomic numbers 1..{max_z - 1} (max_z = {max_z}; 0 = padding): it cannot "
                             f"take that element")
    return z if z.dtype == torch.int64 else z.long()

"""The batch geometry of one forward: prepared once, handed to every attention and encoding layer.

A layer call needs the batch in the "segments of rows" layout of the compiled kernels (float64 row positions,
int64 segment boundaries, the padding mask as rows) and a host-side bound of the molecule size that sizes the
GPU launch grids. Building these costs a float64 copy of the positions and a few small kernels, and reading
the molecule size out of ``cu_seqlens`` costs a host synchronisation. :func:`prepare_geometry` does it once
per model forward (as FlashAttention's caller hands ``cu_seqlens`` and ``max_seqlen`` down to every layer),
and every op accepts the result in place of ``pos``; with ``validate=False`` and a padded batch or a given
``max_seqlen``, nothing here synchronises with the device.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import validation
from .layout import packed_segments, padded_segments


class BatchGeometry:
    """Positions and layout of one batch, in the caller's layout and in the kernels' rows layout.

    Attributes:
        positions: the caller's positions, ``[B, N, 3]`` (padded) or ``[T, 3]`` (packed), float32 or float64.
        mask: bool ``[B, N]`` or None (padded); cu_seqlens: int32/int64 ``[B + 1]`` or None (packed).
        seg: int64 ``[B + 1]`` row boundaries of the molecules (rows = ``positions.reshape(-1, 3)``).
        valid: bool ``[R]`` (False on padding rows) or None (every row is an atom).
        max_atoms: host int ≥ every molecule's row count (``N`` padded, ``max_seqlen`` packed).
        rows_shape: ``positions.shape[:-1]``, the leading shape of the per-atom tensors.
    """

    __slots__ = ("positions", "mask", "cu_seqlens", "seg", "valid", "max_atoms", "rows_shape", "_pos_rows")

    def __init__(self, positions: Tensor, mask: Optional[Tensor], cu_seqlens: Optional[Tensor], seg: Tensor,
                 valid: Optional[Tensor], max_atoms: int):
        self.positions, self.mask, self.cu_seqlens = positions, mask, cu_seqlens
        self.seg, self.valid, self.max_atoms = seg, valid, int(max_atoms)
        self.rows_shape = tuple(positions.shape[:-1])
        self._pos_rows: Optional[Tensor] = None

    @property
    def pos_rows(self) -> Tensor:
        """float64 ``[R, 3]`` contiguous rows of the positions (made on first use, then shared by every layer).

        The cast is differentiable: gradients reach ``positions`` in their own dtype."""
        if self._pos_rows is None:
            self._pos_rows = self.positions.reshape(-1, 3).to(torch.float64).contiguous()
        return self._pos_rows

    @property
    def device(self) -> torch.device:
        return self.positions.device

    @property
    def padded(self) -> bool:
        return self.cu_seqlens is None

    def __repr__(self) -> str:
        layout = "padded" if self.padded else "packed"
        return (f"BatchGeometry({layout}, molecules={self.seg.shape[0] - 1}, rows_shape={self.rows_shape}, "
                f"max_atoms={self.max_atoms}, device={self.device})")


def prepare_geometry(pos: Tensor, mask: Optional[Tensor] = None, *, cu_seqlens: Optional[Tensor] = None,
                     max_seqlen: Optional[int] = None, validate: bool = True) -> BatchGeometry:
    """The :class:`BatchGeometry` of ``pos`` for every layer of one forward.

    Args:
        pos: ``[B, N, 3]`` with optional bool ``mask [B, N]`` (padded), or ``[T, 3]`` with int32
            ``cu_seqlens [B + 1]`` (packed); float32 or float64, in Å.
        max_seqlen: packed only: the largest molecule's atom count, known on the host (e.g. from the data
            loader). When None it is read from ``cu_seqlens``: one host synchronisation.
        validate: the data-dependent checks (finite positions, atoms ≥ 1e-3 Å apart, ``cu_seqlens`` contents,
            ``max_seqlen`` large enough). They read tensor values (a host sync) and are skipped under
            ``torch.compile``.
    """
    validation.check_tensor("pos", pos, (2, 3))
    if pos.shape[-1] != 3:
        raise ValueError(f"pos must end with 3 coordinates, got shape {tuple(pos.shape)}")
    if pos.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"pos must be float32 or float64, got {pos.dtype}")
    validation.check_layout(pos, pos.shape[:-1], mask, cu_seqlens)
    if max_seqlen is not None and (isinstance(max_seqlen, bool) or not isinstance(max_seqlen, int)
                                   or max_seqlen < 0):
        raise ValueError(f"max_seqlen must be a non-negative int, got {max_seqlen!r}")
    if cu_seqlens is None and max_seqlen is not None:
        raise ValueError("max_seqlen goes with cu_seqlens (packed layout); a padded batch's bound is its N")
    checking = validate and not torch.compiler.is_compiling()
    if checking:
        validation.check_values(pos, mask, cu_seqlens)
    if cu_seqlens is None:
        seg, valid = padded_segments(pos.shape[0], pos.shape[1], mask, pos.device)
        return BatchGeometry(pos, mask, None, seg, valid, pos.shape[1])
    seg = packed_segments(cu_seqlens)
    if max_seqlen is None or checking:
        largest = int((seg[1:] - seg[:-1]).max()) if seg.numel() > 1 else 0   # host sync
        if max_seqlen is not None and largest > max_seqlen:
            raise ValueError(f"max_seqlen = {max_seqlen} but the largest molecule of cu_seqlens has {largest} atoms")
        max_seqlen = largest if max_seqlen is None else max_seqlen
    return BatchGeometry(pos, None, cu_seqlens, seg, None, max_seqlen)


def as_geometry(pos, mask: Optional[Tensor], cu_seqlens: Optional[Tensor], max_seqlen: Optional[int],
                validate: bool) -> BatchGeometry:
    """``pos`` itself when it is a :class:`BatchGeometry` (then mask, cu_seqlens and max_seqlen must be None:
    the geometry holds them), else :func:`prepare_geometry` of it."""
    if isinstance(pos, BatchGeometry):
        if mask is not None or cu_seqlens is not None or max_seqlen is not None:
            raise ValueError("pos is a BatchGeometry, which holds the layout: pass mask, cu_seqlens and max_seqlen "
                             "to prepare_geometry, not here")
        return pos
    return prepare_geometry(pos, mask, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, validate=validate)


def rows_of(x: Tensor, geom: BatchGeometry) -> Tensor:
    """Per-atom tensor ``[*rows_shape, ...]`` → contiguous ``[R, ...]`` (a view when already contiguous)."""
    return x.reshape((-1,) + tuple(x.shape[len(geom.rows_shape):])).contiguous()


def check_rows(name: str, x: Tensor, geom: BatchGeometry, trailing: int) -> None:
    """``x`` is ``[*rows_shape, <trailing dims>]`` on the geometry's device."""
    lead = len(geom.rows_shape)
    if x.dim() != lead + trailing or tuple(x.shape[:lead]) != geom.rows_shape:
        raise ValueError(f"{name} must have shape {geom.rows_shape + ('...',) * trailing} to match the positions' "
                         f"leading shape {geom.rows_shape}, got {tuple(x.shape)}")
    if x.device != geom.device:
        raise ValueError(f"{name} is on {x.device} but pos is on {geom.device}; move them to one device")

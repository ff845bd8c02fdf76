"""Geometric positional encoding in Triton (docs/semantics.md §2): forward and backward kernels and their
launchers, rows layout of ``gtkernels::encoding_fwd`` / ``encoding_bwd``.

s_i = Σ_j φ(rinv_ij) over the real atoms j of i's molecule, j = i included (rinv_ii = 0 adds φ(0)), with
φ = Linear(1→h) → GELU → ... → Linear(h→1) → GELU (exact erf GELU).

Both kernels walk tiles of BM rows (persistent grid), loop over the molecule's blocks of BN rows and evaluate
φ on the [BM, BN] pair tile in register-sized chunks (:mod:`.helpers`). Forward: masked row sums. Backward,
for the program of block J: pair (j, i) receives ds_j·φ'(rinv) and pair (i, j) the same rinv with ds_i, so
the symmetric seed ½(ds_j + ds_i) goes back through φ once: doubled, its input gradient is the complete
position gradient of rows J; as it is, the weight gradients (each unordered pair seen by two programs; the
self pair, seen once, gets ds_i). Weight gradients: one float64 row per program, summed after.
"""
from typing import List, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .helpers import (PHI_HIDDEN_ACT, PHI_OUT_ACT, backprop_to_positions, mlp_map, poison_positions, program_scratch,
                      row_ok, tile_rinv, tile_rows)
from .launch import check_segments, compile_options, launch, numerics, pack_mlp, tiles, unpack_grads


@triton.jit
def _encoding_fwd_kernel(POS, VALID, SEG, PRM, SCR, S, R, MAXA, T, n_tiles, HAS_VALID: tl.constexpr,
                         BM: tl.constexpr, BN: tl.constexpr, RG: tl.constexpr, HP: tl.constexpr, NH: tl.constexpr,
                         CP: tl.constexpr, UB: tl.constexpr, CD: tl.constexpr, DD: tl.constexpr, PREC: tl.constexpr):
    NP: tl.constexpr = BM * BN
    pid = tl.program_id(0)
    XS, YS, _, _, SLABS, pairs = program_scratch(SCR, 2, 2, BM, BN, CP, HP)   # rinv | φ | MLP slabs
    for tile in tl.range(pid, n_tiles, tl.num_programs(0), loop_unroll_factor=1, disable_licm=True):
        s0, s1, r0, poison = tile_rows(SEG, tile, R, T, MAXA, BM)
        if r0 < s1:
            rows = r0 + tl.arange(0, BM)
            rin = rows < s1
            rok = row_ok(VALID, rows, rin, HAS_VALID)
            acc = tl.zeros([BM], dtype=CD)
            for c0 in tl.range(s0, s1, BN, loop_unroll_factor=1, disable_licm=True):
                cols = c0 + tl.arange(0, BN)
                cok = row_ok(VALID, cols, cols < s1, HAS_VALID)
                tile_rinv(XS, POS, VALID, r0, c0, s1, BM, BN, RG, HAS_VALID, CD)
                mlp_map(XS, YS, PRM, SLABS, NP, PHI_HIDDEN_ACT, PHI_OUT_ACT, NH, HP, CP, UB, CD, DD, PREC)
                real = rok[:, None] & cok[None, :]          # the self pair counts (rinv 0)
                acc += tl.sum(tl.where(real, tl.load(YS + pairs), 0.0), axis=1)
                tl.debug_barrier()
            acc = tl.where(poison, float("nan"), acc)
            tl.store(S + rows, acc.to(S.dtype.element_ty), mask=rin)


@triton.jit
def _encoding_bwd_kernel(DS, POS, VALID, SEG, PRM, SCR, GRD, DPOS, R, MAXA, T, n_tiles, NPRM,
                         HAS_VALID: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, RG: tl.constexpr,
                         HP: tl.constexpr, NH: tl.constexpr, CP: tl.constexpr, UB: tl.constexpr, CD: tl.constexpr,
                         DD: tl.constexpr, PREC: tl.constexpr):
    pid = tl.program_id(0)
    # rinv | seed | ∂L/∂rinv | MLP slabs
    XS, SD, DXS, _, SLABS, pairs = program_scratch(SCR, 3, NH + 3, BM, BN, CP, HP)
    grd = GRD + pid.to(tl.int64) * NPRM
    for tile in tl.range(pid, n_tiles, tl.num_programs(0), loop_unroll_factor=1, disable_licm=True):
        s0, s1, r0, poison = tile_rows(SEG, tile, R, T, MAXA, BM)
        if r0 < s1:
            rows = r0 + tl.arange(0, BM)
            rin = rows < s1
            rok = row_ok(VALID, rows, rin, HAS_VALID)
            ds_j = tl.load(DS + rows, mask=rok, other=0.0).to(CD)
            for c0 in tl.range(s0, s1, BN, loop_unroll_factor=1, disable_licm=True):
                cols = c0 + tl.arange(0, BN)
                cok = row_ok(VALID, cols, cols < s1, HAS_VALID)
                ds_i = tl.load(DS + cols, mask=cok, other=0.0).to(CD)
                real = rok[:, None] & cok[None, :]
                tl.store(SD + pairs, tl.where(real, 0.5 * (ds_j[:, None] + ds_i[None, :]), 0.0))
                tile_rinv(XS, POS, VALID, r0, c0, s1, BM, BN, RG, HAS_VALID, CD)   # (its barrier orders SD too)
                backprop_to_positions(XS, SD, DXS, PRM, grd, SLABS, DPOS, POS, VALID, r0, c0, s1, PHI_HIDDEN_ACT,
                                      PHI_OUT_ACT, BM, BN, RG, NH, HP, CP, UB, CD, DD, PREC, HAS_VALID)
            if poison:
                poison_positions(DPOS, r0, s1, BM)


def _prepare(pos, phi, seg, valid, max_atoms, precision):
    check_segments(seg, valid, pos.shape[0], max_atoms, pos.device)
    num = numerics(phi[0].dtype, precision)
    prm, nh, hp = pack_mlp(phi, num.cd)
    geo = tiles(seg, max_atoms, hp, num.cd)
    const = dict(HAS_VALID=valid is not None, BM=geo.block, BN=geo.block, RG=geo.group_rows, HP=hp, NH=nh,
                 CP=geo.chunk, UB=geo.units, CD=num.CD, DD=num.DD, PREC=num.PREC, **compile_options(geo.block))
    return num, prm, nh, hp, geo, (valid if valid is not None else seg), const


def encoding_fwd(pos: Tensor, phi: List[Tensor], seg: Tensor, valid: Optional[Tensor], max_atoms: int,
                 precision: str) -> Tensor:
    """s ``[R]`` in the dtype of the φ parameters, from float64 ``pos [R, 3]``, φ ``[W0, b0, ..., Wn, bn]``,
    int64 ``seg [B + 1]``, bool ``valid [R]`` or None and the host bound ``max_atoms``; 0 for padding rows."""
    R = pos.shape[0]
    num, prm, nh, hp, geo, valid_arg, const = _prepare(pos, phi, seg, valid, max_atoms, precision)
    s = torch.zeros(R, dtype=phi[0].dtype, device=pos.device)
    if R == 0 or geo.n_tiles == 0:
        return s
    scratch = torch.empty(geo.programs * (2 * geo.block ** 2 + 2 * geo.chunk * hp), dtype=num.cd,
                          device=pos.device)
    launch(_encoding_fwd_kernel, (geo.programs,), pos.device, pos, valid_arg, seg, prm, scratch, s, R, max_atoms,
             geo.per_molecule, geo.n_tiles, **const)
    return s


def encoding_bwd(ds: Tensor, pos: Tensor, phi: List[Tensor], seg: Tensor, valid: Optional[Tensor], max_atoms: int,
                 precision: str) -> Tuple[Tensor, List[Tensor]]:
    """Backward of :func:`encoding_fwd`: ``dpos [R, 3]`` float64 and the φ gradients (shapes/dtypes of φ)."""
    R = pos.shape[0]
    num, prm, nh, hp, geo, valid_arg, const = _prepare(pos, phi, seg, valid, max_atoms, precision)
    dpos = torch.zeros((R, 3), dtype=torch.float64, device=pos.device)
    if R == 0 or geo.n_tiles == 0:
        return dpos, [torch.zeros_like(p) for p in phi]
    scratch = torch.empty(geo.programs * (3 * geo.block ** 2 + (nh + 3) * geo.chunk * hp), dtype=num.cd,
                          device=pos.device)
    grd = torch.zeros((geo.programs, prm.numel()), dtype=torch.float64, device=pos.device)
    launch(_encoding_bwd_kernel, (geo.programs,), pos.device, ds.contiguous(), pos, valid_arg, seg, prm, scratch,
             grd, dpos, R, max_atoms, geo.per_molecule, geo.n_tiles, prm.numel(), **const)
    return dpos, unpack_grads(grd.sum(0), phi)

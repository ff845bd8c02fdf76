"""Triton geometric positional encoding (DESIGN.md §2), rows layout of ``gtkernels::encoding_fwd/_bwd``.

s_i = Σ_j φ(rinv_ij) over the real atoms j of i's molecule, j = i included (rinv_ii = 0 adds φ(0)), with
φ = Linear(1→h) → GELU → ... → Linear(h→1) → GELU (exact erf GELU).

Forward: one program per (molecule, block I of BM rows), looping over the molecule's blocks J: rinv on the
tile (float64 geometry), φ on the [BM·BN] pair tile (hidden layers as ``tl.dot``), masked row sums.

Backward: one program per (molecule, block J), looping over blocks I. With ds the incoming gradient, pair
(i, j) receives ds_i·GELU'(z_ij) and pair (j, i) the same rinv with ds_j, so the program back-propagates the
symmetric seed (ds_j + ds_i)·GELU'(z_ji) through φ once: its input gradient gives the complete position
gradient of rows J; the weight gradients (each unordered pair then counted twice over all programs) use the
seed halved. Weight gradients: one row per program of a [P, n_params] buffer, reduced with ``torch.sum``.

Peak extra global memory: the packed φ weights and the float64 [num_programs, n_params] partials (the output
layer's sums are taken in float64 inside the kernel). Nothing N×N.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _common as C


@triton.jit
def _enc_fwd_kernel(POS, VALID, PRM, TAB, S, HAS_VALID: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                    HP: tl.constexpr, NH: tl.constexpr, PREC: tl.constexpr, CD: tl.constexpr):
    pid = tl.program_id(0)
    s0 = tl.load(TAB + 3 * pid)
    s1 = tl.load(TAB + 3 * pid + 1)
    r0 = tl.load(TAB + 3 * pid + 2)
    rows = r0 + tl.arange(0, BM)
    rin = rows < s1
    rok = C._row_ok(VALID, rows, rin, HAS_VALID)
    xi, yi, zi = C._load_pos(POS, rows, rok)
    acc = tl.zeros([BM], dtype=CD)
    for c0 in range(s0, s1, BN):
        cols = c0 + tl.arange(0, BN)
        cok = C._row_ok(VALID, cols, cols < s1, HAS_VALID)
        xj, yj, zj = C._load_pos(POS, cols, cok)
        allowed, dx, dy, dz, r, rinv = C._pair_geometry(xi, yi, zi, xj, yj, zj, rows, cols, rok, cok)
        zl, z0, z1, z2, z3 = C._mlp_fwd(tl.reshape(rinv.to(CD), BM * BN), PRM, NH, HP, 1, PREC)
        val = tl.reshape(C._act(zl, 1), BM, BN)
        real = rok[:, None] & cok[None, :]          # the self pair counts (rinv 0)
        acc += tl.sum(tl.where(real, val, 0.0), axis=1)
    tl.store(S + rows, acc.to(S.dtype.element_ty), mask=rin)


@triton.jit
def _enc_bwd_kernel(DS, POS, VALID, PRM, TAB, DPOS, GRD, NPRM, HAS_VALID: tl.constexpr, BM: tl.constexpr,
                    BN: tl.constexpr, HP: tl.constexpr, NH: tl.constexpr, PREC: tl.constexpr, CD: tl.constexpr):
    pid = tl.program_id(0)
    s0 = tl.load(TAB + 3 * pid)
    s1 = tl.load(TAB + 3 * pid + 1)
    r0 = tl.load(TAB + 3 * pid + 2)
    grd = GRD + pid.to(tl.int64) * NPRM
    rows = r0 + tl.arange(0, BM)
    rin = rows < s1
    rok = C._row_ok(VALID, rows, rin, HAS_VALID)
    xi, yi, zi = C._load_pos(POS, rows, rok)
    ds_j = tl.load(DS + rows, mask=rok, other=0.0).to(CD)
    gx = tl.zeros([BM], dtype=tl.float64)
    gy = tl.zeros([BM], dtype=tl.float64)
    gz = tl.zeros([BM], dtype=tl.float64)
    for c0 in range(s0, s1, BN):
        cols = c0 + tl.arange(0, BN)
        cok = C._row_ok(VALID, cols, cols < s1, HAS_VALID)
        xj, yj, zj = C._load_pos(POS, cols, cok)
        ds_i = tl.load(DS + cols, mask=cok, other=0.0).to(CD)
        allowed, dx, dy, dz, r, rinv = C._pair_geometry(xi, yi, zi, xj, yj, zj, rows, cols, rok, cok)
        x = tl.reshape(rinv.to(CD), BM * BN)
        zl, z0, z1, z2, z3 = C._mlp_fwd(x, PRM, NH, HP, 1, PREC)
        real = rok[:, None] & cok[None, :]
        # symmetric seed (ds_j + ds_i), halved for the weights; through the output GELU
        seed = tl.where(real, 0.5 * (ds_j[:, None] + ds_i[None, :]), 0.0)
        seed = C._act_bwd(zl, tl.reshape(seed, BM * BN), 1)
        drinv = C._mlp_bwd(x, seed, z0, z1, z2, z3, PRM, grd, NH, HP, 1, PREC)
        drinv = tl.reshape(drinv, BM, BN) * 2.0
        c = C._rinv_grad_coeff(allowed, r, rinv, drinv)
        gx += tl.sum(c * dx, axis=1)
        gy += tl.sum(c * dy, axis=1)
        gz += tl.sum(c * dz, axis=1)
        tl.debug_barrier()  # the next block reads back the gradient row stored above
    tl.store(DPOS + rows * 3 + 0, gx, mask=rin)
    tl.store(DPOS + rows * 3 + 1, gy, mask=rin)
    tl.store(DPOS + rows * 3 + 2, gz, mask=rin)


def _setup(pos, phi, seg):
    cd = C.compute_dtype(phi[0].dtype)
    prm, nh, hp = C.pack_mlp(phi, cd)
    block = C.block_size(C.max_atoms(seg))
    return cd, prm, nh, hp, block, C.program_table(seg, block)


def encoding_fwd(pos: Tensor, phi: List[Tensor], seg: Tensor, valid: Optional[Tensor], max_atoms: int,
                 precision: str) -> Tensor:
    """s ``[R]`` in the dtype of the φ parameters, from ``pos [R, 3]`` (read as float64), φ
    ``[W0, b0, ..., Wn, bn]``, int64 ``seg [B + 1]`` and bool ``valid [R]`` or None; 0 for padding rows."""
    R = pos.shape[0]
    s = torch.zeros(R, dtype=phi[0].dtype, device=pos.device)
    cd, prm, nh, hp, block, tab = _setup(pos, phi, seg)
    if R == 0 or tab.shape[0] == 0:
        return s
    valid_t, has_valid = C.valid_arg(valid, seg)
    _enc_fwd_kernel[(tab.shape[0],)](pos.to(torch.float64).contiguous(), valid_t, prm, tab, s,
                                     HAS_VALID=has_valid, BM=block, BN=block, HP=hp, NH=nh,
                                     PREC=C.dot_precision(cd, precision), CD=C.tl_dtype(cd), **C.launch_options(block))
    return s


def encoding_bwd(ds: Tensor, pos: Tensor, phi: List[Tensor], seg: Tensor, valid: Optional[Tensor], max_atoms: int,
                 precision: str) -> Tuple[Tensor, List[Tensor]]:
    """Backward of :func:`encoding_fwd`: ``dpos [R, 3]`` float64 and the φ gradients (shapes/dtypes of φ)."""
    R = pos.shape[0]
    dpos = torch.zeros((R, 3), dtype=torch.float64, device=pos.device)
    cd, prm, nh, hp, block, tab = _setup(pos, phi, seg)
    n_prog = tab.shape[0]
    if R == 0 or n_prog == 0:
        return dpos, [torch.zeros_like(p) for p in phi]
    grd = torch.zeros((n_prog, prm.numel()), dtype=torch.float64, device=pos.device)
    valid_t, has_valid = C.valid_arg(valid, seg)
    _enc_bwd_kernel[(n_prog,)](ds.contiguous(), pos.to(torch.float64).contiguous(), valid_t, prm, tab, dpos, grd,
                               prm.numel(), HAS_VALID=has_valid, BM=block, BN=block, HP=hp, NH=nh,
                               PREC=C.dot_precision(cd, precision), CD=C.tl_dtype(cd), **C.launch_options(block))
    return dpos, C.unpack_grads(grd.sum(0), phi)

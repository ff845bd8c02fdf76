"""Fused geometric attention in Triton (docs/semantics.md §4): forward and backward kernels and their launchers, rows
layout of ``gtkernels::attention_fwd`` / ``attention_bwd``.

Both kernels walk tiles of BM rows of one molecule (a persistent grid, :func:`.helpers.tile_rows`), loop over
the molecule's key blocks of BN rows, evaluate ψω once per pair of the [BM, BN] tile in register-sized chunks
(:func:`.helpers.mlp_map`), then loop over ALL heads inside the program reusing the gate g = ψ²: ψω, the
O(HP²)-per-pair part, is never recomputed per head.

Forward, per head: the online softmax keeps the UN-gated statistics (running max m, running sum l of exp(S − m))
and the GATED numerator acc = Σ_j exp(S_ij − m)·g_ij·v_j, rescaled by exp(m_old − m_new) when m grows;
out = acc / l (no renormalisation by the gates), lse = m + log l. The state of H heads cannot live in
registers, so between key blocks it lives in per-row global buffers owned by the program; a molecule of one
key block (QM9) writes out and lse directly.

Backward, from the saved un-gated lse and Δ_i = Σ_d dO_i·O_i: P_ij = exp(S_ij − lse_i), dA_ij = dO_i·v_j,
dS = P (g dA − Δ), dq = scale Σ_j dS k, dk = scale Σ_i dS q, dv = Σ_i P g dO, dg = Σ_heads P dA, dψ = 2ψ dg.
The program of block J handles, for every block I, J as queries (dq_J, dg_JI) and J as keys (dk_J, dv_J,
dg_IJᵀ); the symmetric seed ψ(dg_JI + dg_IJᵀ) goes back through ψω once: doubled, its input gradient gives
the complete position gradient of rows J; as it is, the weight gradients (each unordered pair is seen by two
programs). Every output row has one writer; ψ gradients go to one float64 row per program, summed after.

Padding rows (valid False) are never loaded: NaN or Inf there cannot reach a real output.
"""
from typing import List, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..contract import lse_dtype
from .helpers import (PSI_HIDDEN_ACT, PSI_OUT_ACT, accumulate, backprop_to_positions, in_loop, mlp_map,
                      poison_positions, program_scratch, row_ok, scores, tile_rinv, tile_rows)
from .launch import (MAX_HEAD_DIM, check_segments, compile_options, launch, numerics, pack_mlp, small_head, tiles,
                     unpack_grads)


@triton.jit
def _attention_fwd_kernel(Q, K, V, POS, VALID, SEG, PRM, SCR, M, LS, ACC, OUT, LSE, R, H, D, MAXA, T, n_tiles,
                          SCALE: "fp64", HAS_VALID: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                          RG: tl.constexpr, DP: tl.constexpr, SMALL: tl.constexpr, HP: tl.constexpr,
                          NH: tl.constexpr, CP: tl.constexpr, UB: tl.constexpr, CD: tl.constexpr, DD: tl.constexpr,
                          PREC: tl.constexpr, HPREC: tl.constexpr):
    NP: tl.constexpr = BM * BN
    pid = tl.program_id(0)
    XS, YS, _, _, SLABS, pairs = program_scratch(SCR, 2, 2, BM, BN, CP, HP)   # rinv | ψ | MLP slabs
    scale = tl.full([], SCALE, CD)      # (a Python float under the interpreter: exact there too)
    HD = H * D
    # addresses: a scalar base per tile (int64) plus int32 offsets within the tile, shared by every tensor of
    # the [R, H, D] layout (loop-invariant pointer tensors would hold registers across the head loop)
    i = tl.arange(0, BM)[:, None]
    j = tl.arange(0, BN)[None, :]
    for tile in tl.range(pid, n_tiles, tl.num_programs(0), loop_unroll_factor=1, disable_licm=True):
        s0, s1, r0, poison = tile_rows(SEG, tile, R, T, MAXA, BM)
        if r0 < s1:
            rin = r0 + i < s1
            rok = row_ok(VALID, r0 + i, rin, HAS_VALID)               # [BM, 1]
            for c0 in tl.range(s0, s1, BN, loop_unroll_factor=1, disable_licm=True):
                cok = row_ok(VALID, c0 + j, c0 + j < s1, HAS_VALID)   # [1, BN]
                allowed = rok & cok & (i + (r0 - c0) != j)
                tile_rinv(XS, POS, VALID, r0, c0, s1, BM, BN, RG, HAS_VALID, CD)
                mlp_map(XS, YS, PRM, SLABS, NP, PSI_HIDDEN_ACT, PSI_OUT_ACT, NH, HP, CP, UB, CD, DD, PREC)
                g = tl.load(YS + pairs)
                g = g * g                               # the gate ψ², shared by every head
                later = i * 0 + c0 > s0                 # a previous key block left state to read
                last = c0 + BN >= s1
                for h in tl.range(H, loop_unroll_factor=1, disable_licm=True):
                    ro = in_loop(i * HD + h * D)
                    co = in_loop(j * HD + h * D)
                    # tile bases recomputed in the loop (scalars: cheaper than live registers across it)
                    s = scores(Q + r0 * HD, K + c0 * HD, ro, co, rok, cok, D, DP, SMALL, DD, CD, HPREC) * scale
                    s = tl.where(allowed, s, float("-inf"))
                    mo = r0 * H + in_loop(i * H + h)
                    m_old = tl.load(M + mo, mask=later & rin, other=float("-inf"))
                    l_old = tl.load(LS + mo, mask=later & rin, other=0.0)
                    m_new = tl.maximum(m_old, tl.max(s, axis=1, keep_dims=True))
                    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)   # rows with no key yet
                    alpha = tl.exp(m_old - m_safe)
                    p = tl.exp(s - m_safe)                                   # un-gated probabilities × l
                    l_new = l_old * alpha + tl.sum(p, axis=1, keep_dims=True)
                    # gated numerator acc = acc·alpha + Σ_j p g v_j; after the last key block out = acc / l
                    if last:
                        has = l_new > 0.0        # padding rows, one-atom molecules: out 0, lse −inf
                        l_safe = tl.where(has, l_new, 1.0)
                        post = tl.where(poison, float("nan"), tl.where(has, 1.0 / l_safe, 0.0))
                        accumulate(ACC + r0 * HD, OUT + r0 * HD, ro, rin, later, alpha, post, p * g, V + c0 * HD, co,
                                     cok, D, DP, SMALL, DD, CD, HPREC)
                        lse = tl.where(has, m_safe + tl.log(l_safe), float("-inf"))
                        tl.store(LSE + mo, tl.where(poison, float("nan"), lse), mask=rin)
                    else:
                        accumulate(ACC + r0 * HD, ACC + r0 * HD, ro, rin, later, alpha, alpha * 0.0 + 1.0, p * g,
                                     V + c0 * HD, co, cok, D, DP, SMALL, DD, CD, HPREC)
                        tl.store(M + mo, m_new, mask=rin)
                        tl.store(LS + mo, l_new, mask=rin)
                tl.debug_barrier()   # the next key block rewrites the scratch and reads the state back


@triton.jit
def _attention_bwd_kernel(DO, Q, K, V, POS, VALID, SEG, PRM, SCR, GRD, LSE, DELTA, DQ, DK, DV, DPOS, R, H, D,
                          MAXA, T, n_tiles, NPRM, SCALE: "fp64", HAS_VALID: tl.constexpr, BM: tl.constexpr,
                          BN: tl.constexpr, RG: tl.constexpr, DP: tl.constexpr, SMALL: tl.constexpr, HP: tl.constexpr,
                          NH: tl.constexpr, CP: tl.constexpr, UB: tl.constexpr, CD: tl.constexpr,
                          DD: tl.constexpr, PREC: tl.constexpr, HPREC: tl.constexpr):
    NP: tl.constexpr = BM * BN
    pid = tl.program_id(0)
    # rinv | ψ | seed | ∂L/∂rinv | MLP slabs
    XS, YS, SD, DXS, SLABS, pairs = program_scratch(SCR, 4, NH + 3, BM, BN, CP, HP)
    grd = GRD + pid.to(tl.int64) * NPRM
    scale = tl.full([], SCALE, CD)
    HD = H * D
    i = tl.arange(0, BM)[:, None]     # rows J of the tile (int32 offsets from r0, see the forward)
    j = tl.arange(0, BN)[None, :]     # rows I of the partner block (from c0)
    for tile in tl.range(pid, n_tiles, tl.num_programs(0), loop_unroll_factor=1, disable_licm=True):
        s0, s1, r0, poison = tile_rows(SEG, tile, R, T, MAXA, BM)
        if r0 < s1:
            rin = r0 + i < s1
            rok = row_ok(VALID, r0 + i, rin, HAS_VALID)
            one = tl.where(poison, float("nan"), 1.0) + tl.zeros([BM, 1], dtype=CD)   # NaN: a molecule > MAXA
            for c0 in tl.range(s0, s1, BN, loop_unroll_factor=1, disable_licm=True):
                cok = row_ok(VALID, c0 + j, c0 + j < s1, HAS_VALID)
                allowed = rok & cok & (i + (r0 - c0) != j)
                tile_rinv(XS, POS, VALID, r0, c0, s1, BM, BN, RG, HAS_VALID, CD)
                mlp_map(XS, YS, PRM, SLABS, NP, PSI_HIDDEN_ACT, PSI_OUT_ACT, NH, HP, CP, UB, CD, DD, PREC)
                psi = tl.load(YS + pairs)
                g = psi * psi
                dg = tl.zeros([BM, BN], dtype=CD)
                later = i * 0 + c0 > s0
                # J queries, I keys: (j, i) = pair j → i
                for h in tl.range(H, loop_unroll_factor=1, disable_licm=True):
                    ro = in_loop(i * HD + h * D)
                    co = in_loop(j * HD + h * D)
                    mo = in_loop(i * H + h)
                    # row (r0) and column (c0) bases recomputed in the loop: scalars, cheaper than live registers
                    lse_j = tl.load(LSE + r0 * H + mo, mask=rok, other=0.0)
                    lse_j = tl.where(lse_j == float("-inf"), 0.0, lse_j)   # such rows have no allowed pair
                    delta_j = tl.load(DELTA + r0 * H + mo, mask=rok, other=0.0)
                    s = scores(Q + r0 * HD, K + c0 * HD, ro, co, rok, cok, D, DP, SMALL, DD, CD, HPREC) * scale
                    p = tl.where(allowed, tl.exp(s - lse_j), 0.0)
                    da = scores(DO + r0 * HD, V + c0 * HD, ro, co, rok, cok, D, DP, SMALL, DD, CD, HPREC)
                    dg += p * da
                    ds = p * (g * da - delta_j)
                    accumulate(DQ + r0 * HD, DQ + r0 * HD, ro, rok, later, one, one, ds * scale, K + c0 * HD, co,
                                 cok, D, DP, SMALL, DD, CD, HPREC)
                # I queries, J keys, in [J, I]: i → j
                for h in tl.range(H, loop_unroll_factor=1, disable_licm=True):
                    ro = in_loop(i * HD + h * D)
                    co = in_loop(j * HD + h * D)
                    mo = in_loop(j * H + h)
                    lse_i = tl.load(LSE + c0 * H + mo, mask=cok, other=0.0)
                    lse_i = tl.where(lse_i == float("-inf"), 0.0, lse_i)
                    delta_i = tl.load(DELTA + c0 * H + mo, mask=cok, other=0.0)
                    s = scores(K + r0 * HD, Q + c0 * HD, ro, co, rok, cok, D, DP, SMALL, DD, CD, HPREC) * scale
                    p = tl.where(allowed, tl.exp(s - lse_i), 0.0)
                    da = scores(V + r0 * HD, DO + c0 * HD, ro, co, rok, cok, D, DP, SMALL, DD, CD, HPREC)
                    dg += p * da
                    accumulate(DK + r0 * HD, DK + r0 * HD, ro, rok, later, one, one, p * (g * da - delta_i) * scale,
                                 Q + c0 * HD, co, cok, D, DP, SMALL, DD, CD, HPREC)
                    accumulate(DV + r0 * HD, DV + r0 * HD, ro, rok, later, one, one, p * g, DO + c0 * HD, co, cok, D,
                                 DP, SMALL, DD, CD, HPREC)
                # ∂L/∂ψ of the unordered pair is 2ψ(dg_ji + dg_ij): seed ψ·dg for the weights (seen twice)
                tl.store(SD + pairs, psi * dg)
                tl.debug_barrier()
                backprop_to_positions(XS, SD, DXS, PRM, grd, SLABS, DPOS, POS, VALID, r0, c0, s1, PSI_HIDDEN_ACT,
                                      PSI_OUT_ACT, BM, BN, RG, NH, HP, CP, UB, CD, DD, PREC, HAS_VALID)
            if poison:
                poison_positions(DPOS, r0, s1, BM)


def _prepare(q, psi, seg, valid, max_atoms, precision):
    R, H, D = q.shape
    check_segments(seg, valid, R, max_atoms, q.device)
    num = numerics(q.dtype, precision)
    prm, nh, hp = pack_mlp(psi, num.cd)
    geo = tiles(seg, max_atoms, hp, num.cd)
    dp, small = small_head(D)
    if dp > MAX_HEAD_DIM:
        raise ValueError(f"backend='triton' supports head dims d_k <= {MAX_HEAD_DIM}, got {D}; use "
                         "backend='cuda' or 'reference'")
    valid_arg = valid if valid is not None else seg   # a stand-in pointer, never read without HAS_VALID
    const = dict(HAS_VALID=valid is not None, BM=geo.block, BN=geo.block, RG=geo.group_rows, DP=dp, SMALL=small,
                 HP=hp, NH=nh, CP=geo.chunk, UB=geo.units, CD=num.CD, DD=num.DD, PREC=num.PREC, HPREC=num.HPREC,
                 **compile_options(geo.block))
    return num, prm, nh, hp, geo, valid_arg, const


def attention_fwd(q: Tensor, k: Tensor, v: Tensor, pos: Tensor, psi: List[Tensor], seg: Tensor,
                  valid: Optional[Tensor], max_atoms: int, scale: float, precision: str) -> Tuple[Tensor, Tensor]:
    """Fused forward.

    Args:
        q, k, v: ``[R, H, D]`` contiguous, float32/float64 (float16/bfloat16 on GPU), D ≤ 128.
        pos: ``[R, 3]`` float64. psi: ψω ``[W0, b0, ..., Wn, bn]`` (nn.Linear layout, ≤ 5 layers, width ≤ 128).
        seg: int64 ``[B + 1]`` row boundaries; valid: bool ``[R]`` or None; max_atoms: host bound of the
        molecule size; scale: softmax scale; precision: "ieee" | "tf32".

    Returns:
        ``out [R, H, D]`` (dtype of q) and the un-gated ``lse [R, H]`` (float64 for float64 inputs, float32
        otherwise; −inf for rows with no allowed key).
    """
    R, H, D = q.shape
    num, prm, nh, hp, geo, valid_arg, const = _prepare(q, psi, seg, valid, max_atoms, precision)
    out = torch.zeros_like(q)
    lse = torch.full((R, H), float("-inf"), dtype=lse_dtype(q.dtype), device=q.device)
    if R == 0 or H == 0 or D == 0 or geo.n_tiles == 0:
        return out, lse
    np_ = geo.block * geo.block
    scratch = torch.empty(geo.programs * (2 * np_ + 2 * geo.chunk * hp), dtype=num.cd, device=q.device)
    # online-softmax state between key blocks (molecules longer than one block)
    m_buf = torch.empty((R, H), dtype=num.cd, device=q.device)
    l_buf = torch.empty_like(m_buf)
    acc = out if q.dtype == num.cd else torch.empty((R, H, D), dtype=num.cd, device=q.device)
    launch(_attention_fwd_kernel, (geo.programs,), q.device,
             q, k, v, pos, valid_arg, seg, prm, scratch, m_buf, l_buf, acc, out, lse, R, H, D, max_atoms,
             geo.per_molecule, geo.n_tiles, float(scale), **const)
    return out, lse


def attention_bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, pos: Tensor, psi: List[Tensor], seg: Tensor,
                  valid: Optional[Tensor], max_atoms: int, scale: float, precision: str, out: Tensor,
                  lse: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, List[Tensor]]:
    """Fused backward by recomputation.

    Args: as :func:`attention_fwd`, plus ``dout`` and ``out`` ``[R, H, D]`` and the forward's ``lse [R, H]``.

    Returns:
        ``dq, dk, dv [R, H, D]`` (dtype of q), ``dpos [R, 3]`` float64, and the ψ gradients (shapes and dtypes
        of ``psi``).
    """
    R, H, D = q.shape
    num, prm, nh, hp, geo, valid_arg, const = _prepare(q, psi, seg, valid, max_atoms, precision)
    dpos = torch.zeros((R, 3), dtype=torch.float64, device=q.device)
    if R == 0 or H == 0 or D == 0 or geo.n_tiles == 0:
        return (torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v), dpos,
                [torch.zeros_like(p) for p in psi])
    dq, dk, dv = (torch.zeros((R, H, D), dtype=num.cd, device=q.device) for _ in range(3))
    delta = (dout.to(num.cd) * out.to(num.cd)).sum(-1).contiguous()      # Δ_i = Σ_d dO·O   [R, H]
    np_ = geo.block * geo.block
    scratch = torch.empty(geo.programs * (4 * np_ + (nh + 3) * geo.chunk * hp), dtype=num.cd, device=q.device)
    grd = torch.zeros((geo.programs, prm.numel()), dtype=torch.float64, device=q.device)
    launch(_attention_bwd_kernel, (geo.programs,), q.device,
             dout.contiguous(), q, k, v, pos, valid_arg, seg, prm, scratch, grd, lse.to(num.cd).contiguous(), delta,
             dq, dk, dv, dpos, R, H, D, max_atoms, geo.per_molecule, geo.n_tiles, prm.numel(), float(scale),
             **const)
    dpsi = unpack_grads(grd.sum(0), psi)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dpos, dpsi

"""Triton backward of the fused geometric attention (DESIGN.md §5), rows layout of ``gtkernels::attention_bwd``.

Recomputation from the saved un-gated lse, with D_i = Σ_d dO_i·O_i (computed on the host, O(R·H)):
    P_ij = exp(S_ij − lse_i) (0 on excluded pairs),  dA_ij = dO_i·v_j,
    dS_ij = P_ij (g_ij dA_ij − D_i),  dq_i = scale Σ_j dS_ij k_j,  dk_j = scale Σ_i dS_ij q_i,
    dv_j = Σ_i P_ij g_ij dO_i,  dg_ij = Σ_heads P_ij dA_ij,  dψ_ij = 2 ψ_ij dg_ij.

One kernel, one program per (molecule, block J of BM rows), no atomics. The program owns rows J as queries
AND as keys: for every block I of the molecule it evaluates ψ once on the [J, I] tile (rinv and ψ are
symmetric) and, looping over all heads inside, handles both orientations:
    J as queries, I as keys  → dq_J, and dg_JI;
    I as queries, J as keys  → dk_J, dv_J, and dg_IJᵀ (computed directly in [J, I] orientation).
The symmetric seed dψ_JI + dψ_IJᵀ is back-propagated through ψ ONCE: its input gradient gives the complete
position gradient of rows J (∂rinv_ji/∂p_j = ∂rinv_ij/∂p_j), and since every unordered pair is then seen twice
over all programs, the weight gradients are accumulated with the seed halved (exact in binary floating point).
dq/dk/dv of rows J live in global memory owned by the program (read-modify-write per block I, CTA barrier
between blocks); ψ-parameter gradients go to one row per program of a [P, n_params] buffer, reduced with
``torch.sum`` afterwards (deterministic).

Peak extra global memory: D [R, H] and dq/dk/dv accumulators [R, H, D] in the compute dtype (copied to the
input dtype at the end), and the float64 [num_programs, n_params] gradient partials (n_params =
3·HP + 1 + NH·(HP² + HP), 8,513 for ψ 50 wide with 2 hidden layers: 68 KB per program). Nothing N×N.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _common as C


@triton.jit
def _attn_bwd_kernel(DO, Q, K, V, POS, VALID, PRM, TAB, SCALE, LSE, DD, DQ, DK, DV, DPOS, GRD, H, D, NPRM,
                     HAS_VALID: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, DP: tl.constexpr,
                     HP: tl.constexpr, NH: tl.constexpr, PREC: tl.constexpr, CD: tl.constexpr):
    pid = tl.program_id(0)
    s0 = tl.load(TAB + 3 * pid)
    s1 = tl.load(TAB + 3 * pid + 1)
    r0 = tl.load(TAB + 3 * pid + 2)
    scale = tl.load(SCALE)
    grd = GRD + pid.to(tl.int64) * NPRM
    rows = r0 + tl.arange(0, BM)
    rin = rows < s1
    rok = C._row_ok(VALID, rows, rin, HAS_VALID)
    xi, yi, zi = C._load_pos(POS, rows, rok)
    d = tl.arange(0, DP)
    jmask = rin[:, None] & (d < D)[None, :]
    HD = H * D
    gx = tl.zeros([BM], dtype=tl.float64)
    gy = tl.zeros([BM], dtype=tl.float64)
    gz = tl.zeros([BM], dtype=tl.float64)
    for c0 in range(s0, s1, BN):
        cols = c0 + tl.arange(0, BN)
        cin = cols < s1
        cok = C._row_ok(VALID, cols, cin, HAS_VALID)
        xj, yj, zj = C._load_pos(POS, cols, cok)
        allowed, dx, dy, dz, r, rinv = C._pair_geometry(xi, yi, zi, xj, yj, zj, rows, cols, rok, cok)
        x = tl.reshape(rinv.to(CD), BM * BN)
        psi, z0, z1, z2, z3 = C._mlp_fwd(x, PRM, NH, HP, 0, PREC)
        psi = tl.reshape(psi, BM, BN)
        g = psi * psi
        imask = cin[:, None] & (d < D)[None, :]
        dg = tl.zeros([BM, BN], dtype=CD)
        for h in range(H):
            jo = rows[:, None] * HD + h * D + d[None, :]
            io = cols[:, None] * HD + h * D + d[None, :]
            qj = tl.load(Q + jo, mask=jmask, other=0.0).to(CD)
            kj = tl.load(K + jo, mask=jmask, other=0.0).to(CD)
            vj = tl.load(V + jo, mask=jmask, other=0.0).to(CD)
            doj = tl.load(DO + jo, mask=jmask, other=0.0).to(CD)
            qi = tl.load(Q + io, mask=imask, other=0.0).to(CD)
            ki = tl.load(K + io, mask=imask, other=0.0).to(CD)
            vi = tl.load(V + io, mask=imask, other=0.0).to(CD)
            doi = tl.load(DO + io, mask=imask, other=0.0).to(CD)
            lse_j = tl.load(LSE + rows * H + h, mask=rin, other=0.0)
            lse_i = tl.load(LSE + cols * H + h, mask=cin, other=0.0)
            lse_j = tl.where(lse_j == float("-inf"), 0.0, lse_j)   # such rows have no allowed pair
            lse_i = tl.where(lse_i == float("-inf"), 0.0, lse_i)
            d_j = tl.load(DD + rows * H + h, mask=rin, other=0.0)
            d_i = tl.load(DD + cols * H + h, mask=cin, other=0.0)
            # J as queries, I as keys: [J, I] = S_ji
            s = tl.dot(qj, tl.trans(ki), input_precision=PREC) * scale
            p = tl.where(allowed, tl.exp(s - lse_j[:, None]), 0.0)
            da = tl.dot(doj, tl.trans(vi), input_precision=PREC)
            ds = p * (g * da - d_j[:, None])
            dg += p * da
            dq = tl.load(DQ + jo, mask=jmask, other=0.0) + scale * tl.dot(ds.to(CD), ki, input_precision=PREC)
            tl.store(DQ + jo, dq, mask=jmask)
            # I as queries, J as keys, kept in [J, I] orientation: entry (j, i) holds pair (i → j)
            s2 = tl.dot(kj, tl.trans(qi), input_precision=PREC) * scale
            p2 = tl.where(allowed, tl.exp(s2 - lse_i[None, :]), 0.0)
            da2 = tl.dot(vj, tl.trans(doi), input_precision=PREC)
            ds2 = p2 * (g * da2 - d_i[None, :])
            dg += p2 * da2
            dk = tl.load(DK + jo, mask=jmask, other=0.0) + scale * tl.dot(ds2.to(CD), qi, input_precision=PREC)
            dv = tl.load(DV + jo, mask=jmask, other=0.0) + tl.dot((p2 * g).to(CD), doi, input_precision=PREC)
            tl.store(DK + jo, dk, mask=jmask)
            tl.store(DV + jo, dv, mask=jmask)
        # symmetric seed 2ψ(dg_ji + dg_ij); halved for the weights (each unordered pair is seen twice)
        seed = tl.reshape(psi * dg, BM * BN)
        drinv = C._mlp_bwd(x, seed, z0, z1, z2, z3, PRM, grd, NH, HP, 0, PREC)
        drinv = tl.reshape(drinv, BM, BN) * 2.0
        c = C._rinv_grad_coeff(allowed, r, rinv, drinv)
        gx += tl.sum(c * dx, axis=1)
        gy += tl.sum(c * dy, axis=1)
        gz += tl.sum(c * dz, axis=1)
        tl.debug_barrier()  # the next block reads back dq/dk/dv and the gradient row stored above
    tl.store(DPOS + rows * 3 + 0, gx, mask=rin)
    tl.store(DPOS + rows * 3 + 1, gy, mask=rin)
    tl.store(DPOS + rows * 3 + 2, gz, mask=rin)


def attention_bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, pos: Tensor, psi: List[Tensor], seg: Tensor,
                  valid: Optional[Tensor], max_atoms: int, scale: float, precision: str, out: Tensor,
                  lse: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, List[Tensor]]:
    """Fused backward by recomputation.

    Args: as :func:`gtkernels.triton.attention_fwd`, plus ``dout`` and ``out`` ``[R, H, D]`` and the forward's
    ``lse [R, H]``.

    Returns:
        ``dq, dk, dv [R, H, D]`` (dtype of q), ``dpos [R, 3]`` float64, and the ψ gradients (shapes and dtypes
        of ``psi``).
    """
    R, H, D = q.shape
    cd = C.compute_dtype(q.dtype)
    dpos = torch.zeros((R, 3), dtype=torch.float64, device=q.device)
    prm, nh, hp = C.pack_mlp(psi, cd)
    block = C.block_size(C.max_atoms(seg))
    tab = C.program_table(seg, block)
    n_prog = tab.shape[0]
    if R == 0 or H == 0 or D == 0 or n_prog == 0:
        return (torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v), dpos,
                [torch.zeros_like(p) for p in psi])
    dq, dk, dv = (torch.zeros((R, H, D), dtype=cd, device=q.device) for _ in range(3))
    dd = (dout.to(cd) * out.to(cd)).sum(-1).contiguous()           # D_i = rowsum(dO ∘ O)  [R, H]
    grd = torch.zeros((n_prog, prm.numel()), dtype=torch.float64, device=q.device)
    valid_t, has_valid = C.valid_arg(valid, seg)
    scale_t = torch.tensor([scale], dtype=cd, device=q.device)
    _attn_bwd_kernel[(n_prog,)](
        dout.contiguous(), q.contiguous(), k.contiguous(), v.contiguous(), pos.to(torch.float64).contiguous(),
        valid_t, prm, tab, scale_t, lse.to(cd).contiguous(), dd, dq, dk, dv, dpos, grd, H, D, prm.numel(),
        HAS_VALID=has_valid, BM=block, BN=block, DP=max(16, triton.next_power_of_2(D)), HP=hp, NH=nh,
        PREC=C.dot_precision(q.dtype, precision), CD=C.tl_dtype(cd), **C.launch_options(block))
    dpsi = C.unpack_grads(grd.sum(0), psi)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dpos, dpsi

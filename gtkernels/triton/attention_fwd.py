"""Triton forward of the fused geometric attention (DESIGN.md §5), rows layout of ``gtkernels::attention_fwd``.

One program per (molecule, query block of BM rows). It loops over the molecule's key blocks of BN rows; per
key block it computes rinv on the tile from the float64 positions and ψω on the [BM·BN] pair tile ONCE
(hidden layers as ``tl.dot`` on [BM·BN, HP]), then loops over ALL heads inside the program, reusing the gate
g = ψ² for each of them. Heads are looped inside the program (rather than one program per head group) so
that ψω — the expensive part, O(HP²) per pair against O(D) per pair and head — is never recomputed.

Per head the online softmax keeps the UN-gated statistics (running max m, running sum l of exp(S − m)) and
the GATED numerator acc = Σ_j exp(S_ij − m)·g_ij·v_j, rescaled by exp(m_old − m_new) when m grows; at the end
out = acc / l (no renormalisation by the gates), lse = m + log l. Because the state of H heads cannot live in
registers, it lives in global per-row buffers owned by the program (m, l: [R, H], acc: [R, H, D] in the
compute dtype), read-modified-written per key block with a CTA barrier between key blocks.

Peak extra global memory: the m/l buffers (2·R·H) and, for float16/bfloat16 inputs, a float32 acc
[R, H, D]; plus the packed ψ weights. Nothing N×N.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _common as C


@triton.jit
def _attn_fwd_kernel(Q, K, V, POS, VALID, PRM, TAB, SCALE, ACC, M, L, OUT, LSE, H, D,
                     HAS_VALID: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, DP: tl.constexpr,
                     HP: tl.constexpr, NH: tl.constexpr, PREC: tl.constexpr, CD: tl.constexpr):
    pid = tl.program_id(0)
    s0 = tl.load(TAB + 3 * pid)
    s1 = tl.load(TAB + 3 * pid + 1)
    r0 = tl.load(TAB + 3 * pid + 2)
    scale = tl.load(SCALE)
    rows = r0 + tl.arange(0, BM)
    rin = rows < s1
    rok = C._row_ok(VALID, rows, rin, HAS_VALID)
    xi, yi, zi = C._load_pos(POS, rows, rok)
    d = tl.arange(0, DP)
    qmask = rin[:, None] & (d < D)[None, :]
    HD = H * D
    for c0 in range(s0, s1, BN):
        cols = c0 + tl.arange(0, BN)
        cin = cols < s1
        cok = C._row_ok(VALID, cols, cin, HAS_VALID)
        xj, yj, zj = C._load_pos(POS, cols, cok)
        allowed, dx, dy, dz, r, rinv = C._pair_geometry(xi, yi, zi, xj, yj, zj, rows, cols, rok, cok)
        # ψ once per pair of the tile, shared by every head
        psi, z0, z1, z2, z3 = C._mlp_fwd(tl.reshape(rinv.to(CD), BM * BN), PRM, NH, HP, 0, PREC)
        psi = tl.reshape(psi, BM, BN)
        g = psi * psi
        kmask = cin[:, None] & (d < D)[None, :]
        for h in range(H):
            qo = rows[:, None] * HD + h * D + d[None, :]
            ko = cols[:, None] * HD + h * D + d[None, :]
            q = tl.load(Q + qo, mask=qmask, other=0.0).to(CD)
            k = tl.load(K + ko, mask=kmask, other=0.0).to(CD)
            v = tl.load(V + ko, mask=kmask, other=0.0).to(CD)
            s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale
            s = tl.where(allowed, s, float("-inf"))
            mo = rows * H + h
            m_old = tl.load(M + mo, mask=rin, other=float("-inf"))
            l_old = tl.load(L + mo, mask=rin, other=0.0)
            m_new = tl.maximum(m_old, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)   # rows with no key yet
            alpha = tl.exp(m_old - m_safe)
            p = tl.exp(s - m_safe[:, None])                          # un-gated probabilities (× l)
            l_new = l_old * alpha + tl.sum(p, axis=1)
            acc = tl.load(ACC + qo, mask=qmask, other=0.0) * alpha[:, None]
            acc += tl.dot((p * g).to(CD), v, input_precision=PREC)   # gated numerator
            tl.store(M + mo, m_new, mask=rin)
            tl.store(L + mo, l_new, mask=rin)
            tl.store(ACC + qo, acc, mask=qmask)
        tl.debug_barrier()  # the next key block reads back what the other threads stored
    for h in range(H):
        qo = rows[:, None] * HD + h * D + d[None, :]
        mo = rows * H + h
        m = tl.load(M + mo, mask=rin, other=0.0)
        l = tl.load(L + mo, mask=rin, other=0.0)
        acc = tl.load(ACC + qo, mask=qmask, other=0.0)
        has = l > 0.0   # padding rows and one-atom molecules: out 0, lse −inf
        l_safe = tl.where(has, l, 1.0)
        out = tl.where(has[:, None], acc / l_safe[:, None], 0.0)
        tl.store(OUT + qo, out.to(OUT.dtype.element_ty), mask=qmask)
        tl.store(LSE + mo, tl.where(has, m + tl.log(l_safe), float("-inf")), mask=rin)


def attention_fwd(q: Tensor, k: Tensor, v: Tensor, pos: Tensor, psi: List[Tensor], seg: Tensor,
                  valid: Optional[Tensor], max_atoms: int, scale: float, precision: str) -> Tuple[Tensor, Tensor]:
    """Fused forward.

    Args:
        q, k, v: ``[R, H, D]`` contiguous, float32/float64 (float16/bfloat16 on GPU).
        pos: ``[R, 3]`` float64 (any float dtype is accepted and read as float64).
        psi: ψω ``[W0, b0, ..., Wn, bn]`` (nn.Linear layout, 2 to 5 layers, width ≤ 128).
        seg: int64 ``[B + 1]`` row boundaries; valid: bool ``[R]`` or None.
        scale: softmax scale.

    Returns:
        ``out [R, H, D]`` (dtype of q) and the un-gated ``lse [R, H]`` (float64 for float64 inputs, float32
        otherwise; −inf for rows with no allowed key).
    """
    R, H, D = q.shape
    cd = C.compute_dtype(q.dtype)
    out = torch.zeros_like(q)
    lse = torch.full((R, H), float("-inf"), dtype=cd, device=q.device)
    if R == 0 or H == 0 or D == 0:
        return out, lse
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    pos = pos.to(torch.float64).contiguous()
    prm, nh, hp = C.pack_mlp(psi, cd)
    block = C.block_size(C.max_atoms(seg))
    tab = C.program_table(seg, block)
    if tab.shape[0] == 0:
        return out, lse
    acc = out if q.dtype == cd else torch.zeros((R, H, D), dtype=cd, device=q.device)
    l_buf = torch.zeros((R, H), dtype=cd, device=q.device)
    valid_t, has_valid = C.valid_arg(valid, seg)
    scale_t = torch.tensor([scale], dtype=cd, device=q.device)
    _attn_fwd_kernel[(tab.shape[0],)](
        q, k, v, pos, valid_t, prm, tab, scale_t, acc, lse, l_buf, out, lse, H, D,
        HAS_VALID=has_valid, BM=block, BN=block, DP=max(16, triton.next_power_of_2(D)), HP=hp, NH=nh,
        PREC=C.dot_precision(q.dtype, precision), CD=C.tl_dtype(cd), **C.launch_options(block))
    return out, lse

"""Fused R-MAT relative attention in Triton (docs/semantics.md §6.5): forward and backward kernels and their
launchers, rows layout of ``gtkernels::relative_attention_fwd`` / ``relative_attention_bwd``.

The split of the work: what is per pair runs in the kernels, what is per row runs in torch around them.
- Per row (torch, O(R·H·D·Dh)): g_ih = (q_ih + k_ih)·scale + v_rel_h and a_ih = W2ᴷ_hᵀ g_ih before the forward;
  out_ih = zv_ih + W2ⱽ_h zu_ih + c2ⱽ_h after it; in the backward w_ih = W2ⱽ_hᵀ dout_ih, c_ih = dout_ih·c2ⱽ_h,
  delta_ih = dout_ih·out_ih before, and the second layers' gradients after.
- Per pair (the kernels): uᴷ_ij, uⱽ_ij = LeakyReLU(W1 b_ij + c1) (both φ side by side, 2·HU units, HU = Dh
  padded), with b_ij built in the kernel: the graph channels from the int16 code, the distance basis from the
  float64 positions (0 on every pair with a dummy node). The tile's u goes to a per-program scratch [BM·BN, 2HU].

Forward, per head, online softmax over the key blocks of the molecule (the row itself included):
  e_ij = scale·q_i·k_j + a_i·uᴷ_ij,  zv_i = Σ_j α_ij v_j,  zu_i = Σ_j α_ij uⱽ_ij,  lse_i = log Σ_j exp(e_ij).
The released logit's other terms, g_i·c2ᴷ and k_i·u, are constant along j: the softmax cancels them.

Backward, from lse, per pair and head: p = exp(e_ij − lse_i), dα = dout_i·v_j + w_i·uⱽ_ij + c_i,
ds = p (dα − delta_i); dq_i += scale ds k_j, dk_j += scale ds q_i, dv_j += p dout_i, da_i += ds uᴷ_ij,
ū_i += p uⱽ_ij, duᴷ_ij += ds a_i, duⱽ_ij += p w_i; then du through the LeakyReLU to W1, c1 and, through the
basis, to the distance. Two launches of one kernel: in the first the program of row block J takes every partner
block I with J as queries (dq, da, ū of J, and the W1 gradient of the ordered pairs J → I), in the second with J
as keys (dk, dv of J); each adds ∂L/∂d of its orientation to the position gradient of the rows J (two launches:
one body with both orientations does not fit the registers). Every output row has one writer per launch; W1
gradients go to one float64 row per program, summed after.

Padding rows (valid False) are never loaded: NaN or Inf there cannot reach a real output.
"""
from typing import List, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..contract import (BASIS_CUTOFF, BOND_CHANNELS, BOND_TYPE_SHIFT, BOND_TYPES, DISTANCE_OFFSET,
                        ENVELOPE_EXPONENT, FIELD_MASK, FLAG_SHIFT, GRAPH_CHANNELS, HOP_SHIFT, LEAKY_SLOPE,
                        MASK_FLAG_BIT, lse_dtype)
from .helpers import accumulate, in_loop, poison_positions, row_ok, scores, tile_rows
from .launch import (MAX_HEAD_DIM, _interpreter_geometry, block_size, check_segments, compile_options, launch,
                     numerics, persistent_programs, small_head)

LEAKY = tl.constexpr(LEAKY_SLOPE)
CUTOFF = tl.constexpr(BASIS_CUTOFF)
OFFSET = tl.constexpr(DISTANCE_OFFSET)
# the envelope u(x) = 1/x + A x^(P−1) + B x^P + C x^(P+1), P = exponent + 1 (docs/semantics.md §6.2)
P_ENV = tl.constexpr(ENVELOPE_EXPONENT + 1)
ENV_A = tl.constexpr(-(P_ENV + 1.0) * (P_ENV + 2.0) / 2.0)
ENV_B = tl.constexpr(P_ENV * (P_ENV + 2.0))
ENV_C = tl.constexpr(-P_ENV * (P_ENV + 1.0) / 2.0)
PI = tl.constexpr(3.141592653589793)
GRAPH = tl.constexpr(GRAPH_CHANNELS)
BONDS = tl.constexpr(BOND_CHANNELS)
FLAG_BIT = tl.constexpr(MASK_FLAG_BIT)
TYPE_SHIFT = tl.constexpr(BOND_TYPE_SHIFT)
TYPES = tl.constexpr(BOND_TYPES)
FLAGS_SHIFT = tl.constexpr(FLAG_SHIFT)
HOPS_SHIFT = tl.constexpr(HOP_SHIFT)
FIELD = tl.constexpr(FIELD_MASK)


# ------------------------------------------------------------------------------------------------ pair inputs
@triton.jit
def _pair_rows(r0, c0, g, PG: tl.constexpr, BN: tl.constexpr, SWAP: tl.constexpr):
    """Pairs g .. g + PG of a tile (pair p = a·BN + b, a a row of block r0, b of block c0): the query and key
    rows. SWAP: the key is the row of r0's block (the backward's second orientation)."""
    p = g + tl.arange(0, PG)
    a = r0 + p // BN
    b = c0 + p % BN
    if SWAP:
        return p, b, a
    else:
        return p, a, b


@triton.jit
def _pair_geometry(POS, DUMMY, qrow, krow, pair_ok, HAS_DUMMY: tl.constexpr):
    """For pair vectors (query, key rows): whether the basis is non-zero (both located, x < 1), x = (d + offset)
    / cutoff (0.5 where not inside, so nothing below divides by 0 or overflows), p_q − p_k and d, in float64."""
    located = pair_ok
    if HAS_DUMMY:
        located = located & (tl.load(DUMMY + qrow, mask=pair_ok, other=0) == 0)
        located = located & (tl.load(DUMMY + krow, mask=pair_ok, other=0) == 0)
    dx = tl.load(POS + qrow * 3, mask=located, other=0.0) - tl.load(POS + krow * 3, mask=located, other=0.0)
    dy = tl.load(POS + qrow * 3 + 1, mask=located, other=0.0) - tl.load(POS + krow * 3 + 1, mask=located, other=0.0)
    dz = tl.load(POS + qrow * 3 + 2, mask=located, other=0.0) - tl.load(POS + krow * 3 + 2, mask=located, other=0.0)
    d = tl.sqrt(dx * dx + dy * dy + dz * dz)
    x = (d + OFFSET) / CUTOFF
    inside = located & (x < 1.0)
    return inside, tl.where(inside, x, 0.5), dx, dy, dz, d


@triton.jit
def _envelope(x):
    """The envelope u(x) and du/dx (x in (0, 1), float64)."""
    xp = x * 0.0 + 1.0
    for _ in tl.static_range(P_ENV - 1):
        xp = xp * x                                   # x^(P−1)
    env = 1.0 / x + xp * (ENV_A + x * (ENV_B + x * ENV_C))
    denv = -1.0 / (x * x) + xp / x * ((P_ENV - 1.0) * ENV_A + x * (P_ENV * ENV_B + x * (P_ENV + 1.0) * ENV_C))
    return env, denv


@triton.jit
def _graph_block(code, c):
    """b_ij's graph channels c [1, KC] (0 elsewhere) from the int32 codes [PG]: channel 0 the mask flag, 1–4 the
    bond type, 5–7 the aromatic / conjugated / in-ring flags, 8–13 the hop bucket (a field out of range selects
    nothing, as relation_code.decode_graph_relation)."""
    cc = code[:, None]
    flag_bit = FLAGS_SHIFT + tl.minimum(tl.maximum(c - 1 - TYPES, 0), 2)
    on = (c == 0) & (((cc >> FLAG_BIT) & 1) != 0)
    on = on | ((c >= 1) & (c <= TYPES) & (((cc >> TYPE_SHIFT) & FIELD) == c))
    on = on | ((c > TYPES) & (c < BONDS) & (((cc >> flag_bit) & 1) != 0))
    on = on | ((c >= BONDS) & (c < GRAPH) & (((cc >> HOPS_SHIFT) & FIELD) == c - BONDS))
    return on


@triton.jit
def _relation_block(code, inside, x, env, denv, c0, C, KC: tl.constexpr, DERIV: tl.constexpr):
    """Channels c0 .. c0 + KC of b_ij for PG pairs, float64 [PG, KC]: the graph part, then the distance basis
    env(x)·sin(nπx), n = c − 13 (0 past C and where not inside). DERIV: ∂b/∂d instead (0 on the graph part):
    (env'(x) sin(nπx) + env(x) nπ cos(nπx)) / cutoff."""
    c = c0 + tl.arange(0, KC)[None, :]
    w = PI * (c - GRAPH + 1).to(tl.float64)
    basis = inside[:, None] & (c >= GRAPH) & (c < C)
    theta = x[:, None] * w
    if DERIV:
        val = (denv[:, None] * tl.sin(theta) + env[:, None] * w * tl.cos(theta)) / CUTOFF
        return tl.where(basis, val, 0.0)
    else:
        return tl.where(_graph_block(code, c), 1.0, tl.where(basis, env[:, None] * tl.sin(theta), 0.0))


@triton.jit
def _mm(a, b, CD: tl.constexpr, PREC: tl.constexpr):
    """a [M, K] @ b [K, N] in CD: tl.dot, or a broadcast sum in float64 (no fp64 MMA lowering for these shapes in
    triton 3.6; float64 is the exactness dtype)."""
    if CD == tl.float64:
        return tl.sum(a[:, :, None] * b[None, :, :], axis=1)
    else:
        return tl.dot(a, b, input_precision=PREC, out_dtype=CD)


@triton.jit
def _pair_inputs(POS, DUMMY, VALID, CODE, code_base, n, s0, s1, r0, c0, g, PG: tl.constexpr, BN: tl.constexpr,
                 SWAP: tl.constexpr, HAS_VALID: tl.constexpr, HAS_DUMMY: tl.constexpr):
    """Everything b_ij of the pairs g .. g + PG of the tile depends on."""
    p, qrow, krow = _pair_rows(r0, c0, g, PG, BN, SWAP)
    pair_ok = row_ok(VALID, qrow, qrow < s1, HAS_VALID) & row_ok(VALID, krow, krow < s1, HAS_VALID)
    code = tl.load(CODE + code_base + (qrow - s0) * n + (krow - s0), mask=pair_ok, other=0).to(tl.int32)
    inside, x, dx, dy, dz, d = _pair_geometry(POS, DUMMY, qrow, krow, pair_ok, HAS_DUMMY)
    env, denv = _envelope(x)
    return p, code, inside, x, env, denv


@triton.jit
def _hidden_tile(US, POS, DUMMY, VALID, CODE, W1T, C1, code_base, n, s0, s1, r0, c0, C, BM: tl.constexpr,
                 BN: tl.constexpr, PG: tl.constexpr, HU: tl.constexpr, CPAD: tl.constexpr, KC: tl.constexpr,
                 UB: tl.constexpr, SWAP: tl.constexpr, HAS_VALID: tl.constexpr, HAS_DUMMY: tl.constexpr,
                 CD: tl.constexpr, PREC: tl.constexpr):
    """US[p] = [uᴷ | uⱽ] = LeakyReLU(W1 b + c1) (2·HU units) for the BM·BN pairs of the tile, PG pairs and UB
    units at a time: pre = c1 + Σ_{channel blocks} b[:, block] W1ᵀ[block, units]."""
    W2: tl.constexpr = 2 * HU
    ub = tl.arange(0, UB)
    kc = tl.arange(0, KC)
    for g in tl.range(0, BM * BN, PG, loop_unroll_factor=1, disable_licm=True):
        p, code, inside, x, env, denv = _pair_inputs(POS, DUMMY, VALID, CODE, code_base, n, s0, s1, r0, c0, g, PG,
                                                     BN, SWAP, HAS_VALID, HAS_DUMMY)
        for u0 in tl.range(0, W2, UB, loop_unroll_factor=1, disable_licm=True):
            pre = tl.zeros([PG, UB], dtype=CD) + tl.load(C1 + u0 + ub)[None, :]
            for k0 in tl.range(0, CPAD, KC, loop_unroll_factor=1, disable_licm=True):
                b = _relation_block(code, inside, x, env, denv, k0, C, KC, False).to(CD)
                w = tl.load(W1T + (k0 + kc)[:, None] * W2 + (u0 + ub)[None, :])
                pre += _mm(b, w, CD, PREC)
            tl.store(US + p[:, None] * W2 + (u0 + ub)[None, :], tl.where(pre > 0.0, pre, LEAKY * pre))
    tl.debug_barrier()


@triton.jit
def _add_grad(GRD, offs, g):
    """Read-modify-write of this program's float64 gradient row (one owner: no atomics)."""
    tl.store(GRD + offs, tl.load(GRD + offs) + g.to(tl.float64))


@triton.jit
def _dpre(US, DUS, offs):
    """∂L/∂pre = ∂L/∂u through the LeakyReLU (u > 0 exactly where pre > 0)."""
    du = tl.load(DUS + offs)
    return tl.where(tl.load(US + offs) > 0.0, du, LEAKY * du)


@triton.jit
def _hidden_backprop(US, DUS, DDS, GRD, POS, DUMMY, VALID, CODE, W1T, code_base, n, s0, s1, r0, c0, C,
                     BM: tl.constexpr, BN: tl.constexpr, PG: tl.constexpr, WG: tl.constexpr, HU: tl.constexpr,
                     CPAD: tl.constexpr, KC: tl.constexpr, UB: tl.constexpr, SWAP: tl.constexpr,
                     WEIGHTS: tl.constexpr, HAS_VALID: tl.constexpr, HAS_DUMMY: tl.constexpr, CD: tl.constexpr,
                     PREC: tl.constexpr):
    """The tile's DUS = ∂L/∂u back through the LeakyReLU and W1: DDS[p] = ∂L/∂d_p = Σ_n (dpre W1)[13 + n] ∂b_n/∂d
    (float64, PG pairs at a time) and, with WEIGHTS, dW1ᵀ += bᵀ dpre and dc1 += Σ dpre into GRD ([CPAD, 2HU] then
    [2HU]; WG pairs at a time: the sum over pairs is the dot's K, kept short)."""
    W2: tl.constexpr = 2 * HU
    ub = tl.arange(0, UB)
    kc = tl.arange(0, KC)
    for g in tl.range(0, BM * BN, PG, loop_unroll_factor=1, disable_licm=True):
        p, code, inside, x, env, denv = _pair_inputs(POS, DUMMY, VALID, CODE, code_base, n, s0, s1, r0, c0, g, PG,
                                                     BN, SWAP, HAS_VALID, HAS_DUMMY)
        dd = tl.zeros([PG], dtype=tl.float64)
        for k0 in tl.range(0, CPAD, KC, loop_unroll_factor=1, disable_licm=True):
            db = tl.zeros([PG, KC], dtype=CD)                  # ∂L/∂b of channels k0 .. k0 + KC
            for u0 in tl.range(0, W2, UB, loop_unroll_factor=1, disable_licm=True):
                dpre = _dpre(US, DUS, p[:, None] * W2 + (u0 + ub)[None, :])
                w_t = tl.load(W1T + (k0 + kc)[None, :] * W2 + (u0 + ub)[:, None])          # [UB, KC]
                db += _mm(dpre, w_t, CD, PREC)
            dbd = _relation_block(code, inside, x, env, denv, k0, C, KC, True)
            dd += tl.sum(db.to(tl.float64) * dbd, axis=1)
        tl.store(DDS + p, dd)
    if WEIGHTS:
        for g in tl.range(0, BM * BN, WG, loop_unroll_factor=1, disable_licm=True):
            p, code, inside, x, env, denv = _pair_inputs(POS, DUMMY, VALID, CODE, code_base, n, s0, s1, r0, c0, g,
                                                         WG, BN, SWAP, HAS_VALID, HAS_DUMMY)
            for u0 in tl.range(0, W2, UB, loop_unroll_factor=1, disable_licm=True):
                dpre = _dpre(US, DUS, p[:, None] * W2 + (u0 + ub)[None, :])
                _add_grad(GRD, CPAD * W2 + u0 + ub, tl.sum(dpre.to(tl.float64), axis=0))
                for k0 in tl.range(0, CPAD, KC, loop_unroll_factor=1, disable_licm=True):
                    b_t = tl.trans(_relation_block(code, inside, x, env, denv, k0, C, KC, False).to(CD))
                    _add_grad(GRD, (k0 + kc)[:, None] * W2 + (u0 + ub)[None, :], _mm(b_t, dpre, CD, PREC))
    tl.debug_barrier()


@triton.jit
def _position_grad(DPOS, DDS, POS, DUMMY, VALID, s1, r0, c0, BM: tl.constexpr, BN: tl.constexpr, RG: tl.constexpr,
                   HAS_VALID: tl.constexpr, HAS_DUMMY: tl.constexpr):
    """DPOS[a] += Σ_b DDS[a, b] (p_a − p_b) / d_ab for the rows a of block r0 against the block c0: ∂L/∂d of one
    orientation of the pairs times ∂d/∂p_a (the backward's two launches add both). Rows of r0's block have one
    writer in a launch."""
    cols = c0 + tl.arange(0, BN)[None, :]
    for g in tl.range(0, BM, RG, loop_unroll_factor=1, disable_licm=True):
        rows = r0 + g + tl.arange(0, RG)[:, None]
        pair_ok = row_ok(VALID, rows, rows < s1, HAS_VALID) & row_ok(VALID, cols, cols < s1, HAS_VALID)
        inside, x, dx, dy, dz, d = _pair_geometry(POS, DUMMY, rows, cols, pair_ok, HAS_DUMMY)
        pairs = (g + tl.arange(0, RG))[:, None] * BN + tl.arange(0, BN)[None, :]
        dd = tl.load(DDS + pairs)
        c = tl.where(inside & (d > 0.0), dd / tl.where(d > 0.0, d, 1.0), 0.0)
        rin = rows < s1
        out = DPOS + rows * 3
        tl.store(out, tl.load(out, mask=rin, other=0.0) + tl.sum(c * dx, axis=1, keep_dims=True), mask=rin)
        tl.store(out + 1, tl.load(out + 1, mask=rin, other=0.0) + tl.sum(c * dy, axis=1, keep_dims=True),
                 mask=rin)
        tl.store(out + 2, tl.load(out + 2, mask=rin, other=0.0) + tl.sum(c * dz, axis=1, keep_dims=True),
                 mask=rin)
    tl.debug_barrier()


# -------------------------------------------------------------------------------------- per-head pair products
@triton.jit
def _pair_dot(X, xo, xmask, US, pairs, half, HU: tl.constexpr, MB: tl.constexpr):
    """[BM, BN] = Σ_m x_m u_pm over the HU units of one half of the tile's u (0: uᴷ, HU: uⱽ); x is a row of
    HU values per query, at X + xo (xo [BM, 1] when the queries are the tile's rows, [1, BN] when its columns)."""
    mb = tl.arange(0, MB)[None, None, :]
    acc = tl.zeros([pairs.shape[0], pairs.shape[1]], dtype=US.dtype.element_ty)
    for m0 in tl.range(0, HU, MB, loop_unroll_factor=1, disable_licm=True):
        xv = tl.load(X + xo[:, :, None] + m0 + mb, mask=xmask[:, :, None], other=0.0)
        acc += tl.sum(xv * tl.load(US + pairs[:, :, None] * (2 * HU) + half + m0 + mb), axis=2)
    return acc


@triton.jit
def _row_accumulate(DST, ro, rmask, old, alpha, post, w, US, pairs, half, HU: tl.constexpr, MB: tl.constexpr):
    """DST[i] = ((old_i ? DST[i]·alpha_i : 0) + Σ_j w_ij u_ij) · post_i over HU units of one half of u: rows ro
    [BM, 1] (the tile's rows) of a [·, HU] buffer."""
    mb = tl.arange(0, MB)
    for m0 in tl.range(0, HU, MB, loop_unroll_factor=1, disable_licm=True):
        u = tl.load(US + pairs[:, :, None] * (2 * HU) + half + m0 + mb[None, None, :])
        dst = DST + ro + m0 + mb[None, :]
        acc = tl.load(dst, mask=rmask & old, other=0.0) * alpha + tl.sum(w[:, :, None] * u, axis=1)
        tl.store(dst, acc * post, mask=rmask)


@triton.jit
def _pair_accumulate(DUS, pairs, h, wk, X, wv, Y, xo, xmask, HU: tl.constexpr, MB: tl.constexpr):
    """DUS[p] (= 0 for the first head, h = 0) += [wk_p x | wv_p y]: ∂L/∂uᴷ += ds·a, ∂L/∂uⱽ += p·w of one head;
    x, y are the per-query rows X + xo, Y + xo (as in :func:`_pair_dot`)."""
    mb = tl.arange(0, MB)[None, None, :]
    keep = (pairs[:, :, None] * 0 + h) > 0
    for m0 in tl.range(0, HU, MB, loop_unroll_factor=1, disable_licm=True):
        xv = tl.load(X + xo[:, :, None] + m0 + mb, mask=xmask[:, :, None], other=0.0)
        yv = tl.load(Y + xo[:, :, None] + m0 + mb, mask=xmask[:, :, None], other=0.0)
        dk = DUS + pairs[:, :, None] * (2 * HU) + m0 + mb
        tl.store(dk, tl.load(dk, mask=keep, other=0.0) + wk[:, :, None] * xv)
        tl.store(dk + HU, tl.load(dk + HU, mask=keep, other=0.0) + wv[:, :, None] * yv)


@triton.jit
def _pair_softmax_grad(QS, KS, DOS, VS, ro, co, rok, cok, allowed, A, WD, uo, qmask, LSE, DELTA, CC, mo, US, pairs,
                       scale, D, DP: tl.constexpr, SMALL: tl.constexpr, HU: tl.constexpr, MB: tl.constexpr,
                       CD: tl.constexpr, PREC: tl.constexpr):
    """One head of the backward over the tile: p = exp(e − lse) and ds = p (dα − delta), with
    e = scale QS·KS + a·uᴷ and dα = DOS·VS + w·uⱽ + c. The query side (a, w at A, WD + uo; lse, delta, c at
    LSE, DELTA, CC + mo; mask qmask) is the tile's rows or its columns, as :func:`_pair_dot`'s x."""
    lse = tl.load(LSE + mo, mask=qmask, other=0.0)
    lse = tl.where(lse == float("-inf"), 0.0, lse)      # such rows have no allowed pair
    delta = tl.load(DELTA + mo, mask=qmask, other=0.0)
    c = tl.load(CC + mo, mask=qmask, other=0.0)
    s = scores(QS, KS, ro, co, rok, cok, D, DP, SMALL, CD, CD, PREC) * scale
    s += _pair_dot(A, uo, qmask, US, pairs, 0, HU, MB)
    p = tl.where(allowed, tl.exp(s - lse), 0.0)
    dalpha = scores(DOS, VS, ro, co, rok, cok, D, DP, SMALL, CD, CD, PREC)
    dalpha += _pair_dot(WD, uo, qmask, US, pairs, HU, HU, MB) + c
    return p, p * (dalpha - delta)


# ------------------------------------------------------------------------------------------------------ kernels
@triton.jit
def _relative_fwd_kernel(Q, K, V, A, POS, CODE, CODEOFF, VALID, DUMMY, SEG, W1T, C1, SCR, M, LS, ZV, ZU, LSE, R, H,
                         D, C, MAXA, T, n_tiles, SCALE: "fp64", HAS_VALID: tl.constexpr, HAS_DUMMY: tl.constexpr,
                         BM: tl.constexpr, BN: tl.constexpr, PG: tl.constexpr, WG: tl.constexpr, RG: tl.constexpr,
                         DP: tl.constexpr, SMALL: tl.constexpr, HU: tl.constexpr, CPAD: tl.constexpr,
                         KC: tl.constexpr, UB: tl.constexpr, MB: tl.constexpr, CD: tl.constexpr, PREC: tl.constexpr):
    pid = tl.program_id(0)
    US = SCR + pid.to(tl.int64) * (BM * BN * 2 * HU)          # [uᴷ | uⱽ] of the tile's pairs
    scale = tl.full([], SCALE, CD)
    HD = H * D
    i = tl.arange(0, BM)[:, None]
    j = tl.arange(0, BN)[None, :]
    pairs = i * BN + j
    for tile in tl.range(pid, n_tiles, tl.num_programs(0), loop_unroll_factor=1, disable_licm=True):
        s0, s1, r0, poison = tile_rows(SEG, tile, R, T, MAXA, BM)
        if r0 < s1:
            code_base = tl.load(CODEOFF + tile // T)
            rin = r0 + i < s1
            rok = row_ok(VALID, r0 + i, rin, HAS_VALID)
            for c0 in tl.range(s0, s1, BN, loop_unroll_factor=1, disable_licm=True):
                cok = row_ok(VALID, c0 + j, c0 + j < s1, HAS_VALID)
                allowed = rok & cok                                  # the row itself included
                _hidden_tile(US, POS, DUMMY, VALID, CODE, W1T, C1, code_base, s1 - s0, s0, s1, r0, c0, C, BM, BN,
                             PG, HU, CPAD, KC, UB, False, HAS_VALID, HAS_DUMMY, CD, PREC)
                later = i * 0 + c0 > s0
                last = c0 + BN >= s1
                for h in tl.range(H, loop_unroll_factor=1, disable_licm=True):
                    ro = in_loop(i * HD + h * D)
                    co = in_loop(j * HD + h * D)
                    uo = in_loop(i * (H * HU) + h * HU)
                    # e_ij = scale q_i·k_j + a_i·uᴷ_ij
                    s = scores(Q + r0 * HD, K + c0 * HD, ro, co, rok, cok, D, DP, SMALL, CD, CD, PREC) * scale
                    s += _pair_dot(A + r0 * (H * HU), uo, rok, US, pairs, 0, HU, MB)
                    s = tl.where(allowed, s, float("-inf"))
                    mo = r0 * H + in_loop(i * H + h)
                    m_old = tl.load(M + mo, mask=later & rin, other=float("-inf"))
                    l_old = tl.load(LS + mo, mask=later & rin, other=0.0)
                    m_new = tl.maximum(m_old, tl.max(s, axis=1, keep_dims=True))
                    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                    alpha = tl.exp(m_old - m_safe)
                    p = tl.exp(s - m_safe)
                    l_new = l_old * alpha + tl.sum(p, axis=1, keep_dims=True)
                    if last:
                        has = l_new > 0.0          # padding rows: zv, zu 0 and lse −inf
                        l_safe = tl.where(has, l_new, 1.0)
                        post = tl.where(poison, float("nan"), tl.where(has, 1.0 / l_safe, 0.0))
                        lse = tl.where(has, m_safe + tl.log(l_safe), float("-inf"))
                        tl.store(LSE + mo, tl.where(poison, float("nan"), lse), mask=rin)
                    else:
                        post = alpha * 0.0 + 1.0
                        tl.store(M + mo, m_new, mask=rin)
                        tl.store(LS + mo, l_new, mask=rin)
                    accumulate(ZV + r0 * HD, ZV + r0 * HD, ro, rin, later, alpha, post, p, V + c0 * HD, co, cok, D,
                               DP, SMALL, CD, CD, PREC)
                    _row_accumulate(ZU + r0 * (H * HU), uo, rin, later, alpha, post, p, US, pairs, HU, HU, MB)
                tl.debug_barrier()   # the next key block rewrites the scratch


@triton.jit
def _relative_bwd_kernel(DO, Q, K, V, A, WD, CC, LSE, DELTA, POS, CODE, CODEOFF, VALID, DUMMY, SEG, W1T, C1, SCR, DDS,
                         GRD, DQ, DK, DV, DA, UBAR, DPOS, R, H, D, C, MAXA, T, n_tiles, NPRM, SCALE: "fp64",
                         KEYS: tl.constexpr, HAS_VALID: tl.constexpr, HAS_DUMMY: tl.constexpr, BM: tl.constexpr,
                         BN: tl.constexpr, PG: tl.constexpr, WG: tl.constexpr, RG: tl.constexpr, DP: tl.constexpr,
                         SMALL: tl.constexpr, HU: tl.constexpr, CPAD: tl.constexpr, KC: tl.constexpr, UB: tl.constexpr,
                         MB: tl.constexpr, CD: tl.constexpr, PREC: tl.constexpr):
    NP: tl.constexpr = BM * BN
    pid = tl.program_id(0)
    US = SCR + pid.to(tl.int64) * (4 * NP * HU)               # u | ∂L/∂u of the tile's pairs
    DUS = US + 2 * NP * HU
    DD = DDS + pid.to(tl.int64) * NP                          # ∂L/∂d of the tile's pairs (float64)
    grd = GRD + pid.to(tl.int64) * NPRM
    scale = tl.full([], SCALE, CD)
    HD = H * D
    i = tl.arange(0, BM)[:, None]     # rows J of the tile, from r0
    j = tl.arange(0, BN)[None, :]     # rows I of the partner block, from c0
    pairs = i * BN + j
    for tile in tl.range(pid, n_tiles, tl.num_programs(0), loop_unroll_factor=1, disable_licm=True):
        s0, s1, r0, poison = tile_rows(SEG, tile, R, T, MAXA, BM)
        if r0 < s1:
            code_base = tl.load(CODEOFF + tile // T)
            rin = r0 + i < s1
            rok = row_ok(VALID, r0 + i, rin, HAS_VALID)
            one = tl.where(poison, float("nan"), 1.0) + tl.zeros([BM, 1], dtype=CD)   # NaN: a molecule > MAXA
            for c0 in tl.range(s0, s1, BN, loop_unroll_factor=1, disable_licm=True):
                cok = row_ok(VALID, c0 + j, c0 + j < s1, HAS_VALID)
                allowed = rok & cok
                later = i * 0 + c0 > s0
                if not KEYS:   # J queries, I keys: pairs j → i; dq, da, ū of J and the W1 gradient
                    _hidden_tile(US, POS, DUMMY, VALID, CODE, W1T, C1, code_base, s1 - s0, s0, s1, r0, c0, C, BM, BN,
                                 PG, HU, CPAD, KC, UB, False, HAS_VALID, HAS_DUMMY, CD, PREC)
                    for h in tl.range(H, loop_unroll_factor=1, disable_licm=True):
                        ro = in_loop(i * HD + h * D)
                        co = in_loop(j * HD + h * D)
                        uo = in_loop(i * (H * HU) + h * HU)
                        mo = in_loop(i * H + h)
                        p, ds = _pair_softmax_grad(Q + r0 * HD, K + c0 * HD, DO + r0 * HD, V + c0 * HD, ro, co, rok,
                                                   cok, allowed, A + r0 * (H * HU), WD + r0 * (H * HU), uo, rok,
                                                   LSE + r0 * H, DELTA + r0 * H, CC + r0 * H, mo, US, pairs, scale,
                                                   D, DP, SMALL, HU, MB, CD, PREC)
                        accumulate(DQ + r0 * HD, DQ + r0 * HD, ro, rok, later, one, one, ds * scale, K + c0 * HD, co,
                                   cok, D, DP, SMALL, CD, CD, PREC)
                        _row_accumulate(DA + r0 * (H * HU), uo, rok, later, one, one, ds, US, pairs, 0, HU, MB)
                        _row_accumulate(UBAR + r0 * (H * HU), uo, rok, later, one, one, p, US, pairs, HU, HU, MB)
                        _pair_accumulate(DUS, pairs, h, ds, A + r0 * (H * HU), p, WD + r0 * (H * HU), uo, rok, HU,
                                         MB)
                    tl.debug_barrier()
                    _hidden_backprop(US, DUS, DD, grd, POS, DUMMY, VALID, CODE, W1T, code_base, s1 - s0, s0, s1, r0, c0,
                                     C, BM, BN, PG, WG, HU, CPAD, KC, UB, False, True, HAS_VALID, HAS_DUMMY, CD, PREC)
                else:          # I queries, J keys, in [J, I]: pairs i → j; dk, dv of J
                    _hidden_tile(US, POS, DUMMY, VALID, CODE, W1T, C1, code_base, s1 - s0, s0, s1, r0, c0, C, BM, BN,
                                 PG, HU, CPAD, KC, UB, True, HAS_VALID, HAS_DUMMY, CD, PREC)
                    for h in tl.range(H, loop_unroll_factor=1, disable_licm=True):
                        ro = in_loop(i * HD + h * D)
                        co = in_loop(j * HD + h * D)
                        uo = in_loop(j * (H * HU) + h * HU)
                        mo = in_loop(j * H + h)
                        p, ds = _pair_softmax_grad(K + r0 * HD, Q + c0 * HD, V + r0 * HD, DO + c0 * HD, ro, co, rok,
                                                   cok, allowed, A + c0 * (H * HU), WD + c0 * (H * HU), uo, cok,
                                                   LSE + c0 * H, DELTA + c0 * H, CC + c0 * H, mo, US, pairs, scale,
                                                   D, DP, SMALL, HU, MB, CD, PREC)
                        accumulate(DK + r0 * HD, DK + r0 * HD, ro, rok, later, one, one, ds * scale, Q + c0 * HD, co,
                                   cok, D, DP, SMALL, CD, CD, PREC)
                        accumulate(DV + r0 * HD, DV + r0 * HD, ro, rok, later, one, one, p, DO + c0 * HD, co, cok, D,
                                   DP, SMALL, CD, CD, PREC)
                        _pair_accumulate(DUS, pairs, h, ds, A + c0 * (H * HU), p, WD + c0 * (H * HU), uo, cok, HU,
                                         MB)
                    tl.debug_barrier()
                    _hidden_backprop(US, DUS, DD, grd, POS, DUMMY, VALID, CODE, W1T, code_base, s1 - s0, s0, s1, r0, c0,
                                     C, BM, BN, PG, WG, HU, CPAD, KC, UB, True, False, HAS_VALID, HAS_DUMMY, CD, PREC)
                _position_grad(DPOS, DD, POS, DUMMY, VALID, s1, r0, c0, BM, BN, RG, HAS_VALID, HAS_DUMMY)
            if poison:
                poison_positions(DPOS, r0, s1, BM)


# ------------------------------------------------------------------------------------------------------ launchers
#: Values per thread of one [BM, BN, MB] product block (float32, float64), and pairs per thread of a block of φ's
#: first layer: register budgets the AOT gate (tools/triton_aot.py) holds to zero spills.
PRODUCT_VALUES = {torch.float32: 16, torch.float64: 4}
PAIRS_PER_THREAD = {torch.float32: 0.25, torch.float64: 0.125}
#: Pairs per block of the W1 gradient (the K of its dot).
WEIGHT_PAIRS = 16


def _geometry(max_atoms: int, hu: int, cpad: int, cd: torch.dtype, backward: bool) -> dict:
    """Tile sizes: BM = BN rows (forward: 16, or 32 past 16 atoms in float32; backward: 16, which the AOT gate
    compiles without spills), PG pairs (WG in the W1 gradient) and UB units per block of the hidden layer, KC
    channels per block, MB units per block of the per-head [BM, BN, MB] products, RG rows per position-gradient
    group; the interpreter takes whole tiles (fewer, larger numpy ops)."""
    block = 16 if backward else block_size(max_atoms, cd)
    options = compile_options(block)
    threads = options["num_warps"] * 32
    if _interpreter_geometry():
        return dict(BM=block, BN=block, PG=block * block, WG=block * block, KC=min(cpad, 16), UB=2 * hu, MB=hu,
                    RG=block, **options)
    wide = cd == torch.float64
    return dict(BM=block, BN=block, PG=max(16, int(threads * PAIRS_PER_THREAD[cd])), WG=WEIGHT_PAIRS,
                KC=4 if wide else 16, UB=16 if wide else 32,
                MB=max(1, min(hu, PRODUCT_VALUES[cd] * threads // (block * block))), RG=max(1, threads // block),
                **options)


def _prepare(q, phi_k, phi_v, seg, valid, dummy, max_atoms, backward):
    R, H, D = q.shape
    check_segments(seg, valid, R, max_atoms, q.device)
    num = numerics(q.dtype, "ieee")
    cd = num.cd
    hidden, channels = phi_k[0].shape
    hu = max(16, triton.next_power_of_2(hidden))
    cpad = max(16, triton.next_power_of_2(channels))
    dp, small = small_head(D)
    if dp > MAX_HEAD_DIM:
        raise ValueError(f"backend='triton' supports head dims d_k <= {MAX_HEAD_DIM}, got {D}; use backend='cpu' or "
                         "'reference'")
    # [W1ᴷ | W1ⱽ]ᵀ as [CPAD, 2HU] and [c1ᴷ | c1ⱽ] as [2HU], zero-padded (padded units stay 0: LeakyReLU(0) = 0)
    w1t = torch.zeros(cpad, 2 * hu, dtype=cd, device=q.device)
    w1t[:channels, :hidden] = phi_k[0].t().to(cd)
    w1t[:channels, hu:hu + hidden] = phi_v[0].t().to(cd)
    c1 = torch.zeros(2 * hu, dtype=cd, device=q.device)
    c1[:hidden], c1[hu:hu + hidden] = phi_k[1].to(cd), phi_v[1].to(cd)
    counts = seg[1:] - seg[:-1]
    squares = counts * counts
    code_off = (torch.cumsum(squares, 0) - squares).contiguous()       # first code of each molecule (no host sync)
    geo = _geometry(max_atoms, hu, cpad, cd, backward)
    per = triton.cdiv(max_atoms, geo["BM"])
    n_tiles = (seg.shape[0] - 1) * per
    const = dict(HAS_VALID=valid is not None, HAS_DUMMY=dummy is not None, DP=dp, SMALL=small, HU=hu, CPAD=cpad,
                 CD=num.CD, PREC="ieee", **geo)
    stand_in = seg     # a pointer never read without HAS_VALID / HAS_DUMMY
    args = dict(valid=valid if valid is not None else stand_in, dummy=dummy if dummy is not None else stand_in,
                code_off=code_off, w1t=w1t, c1=c1)
    return cd, hidden, hu, per, n_tiles, const, args


def _heads(w: Tensor, H: int, D: int, cd: torch.dtype) -> Tensor:
    """A second-layer weight [H·D, Dh] as [H, D, Dh] in cd."""
    return w.to(cd).reshape(H, D, -1)


def _pad_units(x: Tensor, hu: int) -> Tensor:
    """[R, H, Dh] → [R, H, HU], zero-padded, contiguous."""
    return torch.nn.functional.pad(x, (0, hu - x.shape[-1])).contiguous()


def _rows_in(valid: Optional[Tensor], cd: torch.dtype, *rows: Tensor) -> List[Tensor]:
    """``[R, H, D]`` tensors in cd, contiguous, 0 on padding rows: the kernels never load those, but the per-row
    torch terms sum over every row (0 · NaN would reach the weight gradients)."""
    out = [t.to(cd).contiguous() for t in rows]
    if valid is not None:
        out = [t.masked_fill(~valid[:, None, None], 0.0) for t in out]
    return out


def _row_terms(q, k, v_rel, w2k, scale, cd):
    """g = (q + k)·scale + v_rel [R, H, D] and a = W2ᴷᵀ g [R, H, Dh] (per row)."""
    H, D = q.shape[1:]
    g = (q.to(cd) + k.to(cd)) * scale
    if v_rel is not None:
        g = g + v_rel.to(cd)
    return g, torch.einsum("rhd,hdm->rhm", g, _heads(w2k, H, D, cd))


def relative_attention_fwd(q: Tensor, k: Tensor, v: Tensor, pos: Tensor, code: Tensor, phi_k: List[Tensor],
                           phi_v: List[Tensor], v_rel: Optional[Tensor], seg: Tensor, valid: Optional[Tensor],
                           dummy: Optional[Tensor], max_atoms: int) -> Tuple[Tensor, Tensor]:
    """Fused forward.

    Args:
        q, k, v: ``[R, H, D]`` contiguous (float32/float64; float16/bfloat16 on a GPU compute in float32), D ≤ 128.
        pos: ``[R, 3]`` float64. code: int16 ``[P]`` (molecule after molecule, each n_b × n_b row-major).
        phi_k, phi_v: ``[W1 [Dh, C], c1 [Dh], W2 [H·D, Dh], c2 [H·D]]``. v_rel: ``[H, D]`` or None.
        seg: int64 ``[B + 1]``; valid, dummy: bool ``[R]`` or None; max_atoms: host bound of the molecule size.

    Returns:
        ``z [R, H, D]`` (dtype of q) and ``lse [R, H]`` of the logits without their per-row constants (float64 for
        float64 inputs, float32 otherwise; −inf for rows with no key).
    """
    R, H, D = q.shape
    cd, hidden, hu, per, n_tiles, const, a = _prepare(q, phi_k, phi_v, seg, valid, dummy, max_atoms, False)
    lse = torch.full((R, H), float("-inf"), dtype=lse_dtype(q.dtype), device=q.device)
    if R == 0 or H == 0 or D == 0 or n_tiles == 0:
        return torch.zeros_like(q), lse
    scale = 1.0 / D ** 0.5
    qc, kc, vc = _rows_in(valid, cd, q, k, v)
    _, a_rows = _row_terms(qc, kc, v_rel, phi_k[2], scale, cd)
    zv = torch.zeros((R, H, D), dtype=cd, device=q.device)
    zu = torch.zeros((R, H, hu), dtype=cd, device=q.device)
    m_buf = torch.empty((R, H), dtype=cd, device=q.device)
    l_buf = torch.empty_like(m_buf)
    programs = persistent_programs(n_tiles, q.device)
    scratch = torch.empty(programs * const["BM"] * const["BN"] * 2 * hu, dtype=cd, device=q.device)
    launch(_relative_fwd_kernel, (programs,), q.device,
           qc, kc, vc, _pad_units(a_rows, hu), pos, code, a["code_off"], a["valid"], a["dummy"], seg, a["w1t"], a["c1"],
           scratch, m_buf, l_buf, zv, zu, lse, R, H, D, phi_k[0].shape[1], max_atoms, per, n_tiles, scale, **const)
    # out = zv + W2ⱽ zu + c2ⱽ on rows with a key (Σ_j α = 1 there), 0 on the others
    has = (lse > float("-inf"))[..., None]
    out = zv + torch.einsum("rhm,hdm->rhd", zu[..., :hidden], _heads(phi_v[2], H, D, cd))
    out = torch.where(has, out + phi_v[3].to(cd).reshape(H, D), zv)
    return out.to(q.dtype), lse


def relative_attention_bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, pos: Tensor, code: Tensor,
                           phi_k: List[Tensor], phi_v: List[Tensor], v_rel: Optional[Tensor], seg: Tensor,
                           valid: Optional[Tensor], dummy: Optional[Tensor], max_atoms: int, out: Tensor,
                           lse: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, List[Tensor], List[Tensor], Tensor]:
    """Fused backward by recomputation from ``lse``.

    Returns:
        ``dq, dk, dv [R, H, D]`` (dtype of q), ``dpos [R, 3]`` float64, the φ_K and φ_V gradients (shapes and
        dtypes of the parameters; that of c2ᴷ is 0) and ``dv_rel [H, D]`` (0 when v_rel is None).
    """
    R, H, D = q.shape
    cd, hidden, hu, per, n_tiles, const, a = _prepare(q, phi_k, phi_v, seg, valid, dummy, max_atoms, True)
    dpos = torch.zeros((R, 3), dtype=torch.float64, device=q.device)
    if R == 0 or H == 0 or D == 0 or n_tiles == 0:
        return (torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v), dpos,
                [torch.zeros_like(p) for p in phi_k], [torch.zeros_like(p) for p in phi_v],
                q.new_zeros((H, D)))
    scale = 1.0 / D ** 0.5
    qc, kc, vc, doc, oc = _rows_in(valid, cd, q, k, v, dout, out)
    g, a_rows = _row_terms(qc, kc, v_rel, phi_k[2], scale, cd)
    w2v = _heads(phi_v[2], H, D, cd)
    wd = torch.einsum("rhd,hdm->rhm", doc, w2v)                             # w = W2ⱽᵀ dout
    cc = torch.einsum("rhd,hd->rh", doc, phi_v[3].to(cd).reshape(H, D)).contiguous()   # dout·c2ⱽ
    delta = (doc * oc).sum(-1).contiguous()
    lse_cd = lse.to(cd).contiguous()
    dq, dk, dv = (torch.zeros((R, H, D), dtype=cd, device=q.device) for _ in range(3))
    da, ubar = (torch.zeros((R, H, hu), dtype=cd, device=q.device) for _ in range(2))
    programs = persistent_programs(n_tiles, q.device)
    np_ = const["BM"] * const["BN"]
    scratch = torch.empty(programs * 4 * np_ * hu, dtype=cd, device=q.device)       # u, ∂L/∂u [NP, 2HU]
    dd_scratch = torch.empty(programs * np_, dtype=torch.float64, device=q.device)   # ∂L/∂d [NP]
    nprm = a["w1t"].numel() + a["c1"].numel()
    grd = torch.zeros((programs, nprm), dtype=torch.float64, device=q.device)
    args = (doc, qc, kc, vc, _pad_units(a_rows, hu), _pad_units(wd, hu), cc, lse_cd, delta, pos, code, a["code_off"],
            a["valid"], a["dummy"], seg, a["w1t"], a["c1"], scratch, dd_scratch, grd, dq, dk, dv, da, ubar, dpos, R, H,
            D, phi_k[0].shape[1], max_atoms, per, n_tiles, nprm, scale)
    for keys in (False, True):     # the rows J as queries, then as keys (each launch half the code: registers)
        launch(_relative_bwd_kernel, (programs,), q.device, *args, KEYS=keys, **const)
    # per row: dg = W2ᴷ da, into q, k (g = (q + k)·scale + v_rel) and v_rel; the second layers' gradients
    da, ubar = da[..., :hidden], ubar[..., :hidden]
    dg = torch.einsum("rhm,hdm->rhd", da, _heads(phi_k[2], H, D, cd))
    dq, dk = dq + scale * dg, dk + scale * dg
    has = (lse_cd > float("-inf")).to(cd)                                   # Σ_j p = 1 on rows with a key
    flat = grd.sum(0)
    cpad, w2 = a["w1t"].shape
    dw1t, dc1 = flat[:cpad * w2].reshape(cpad, w2), flat[cpad * w2:]
    channels = phi_k[0].shape[1]
    dphi_k = [dw1t[:channels, :hidden].t(), dc1[:hidden], torch.einsum("rhd,rhm->hdm", g, da).reshape(H * D, hidden),
              torch.zeros_like(phi_k[3])]
    dphi_v = [dw1t[:channels, hu:hu + hidden].t(), dc1[hu:hu + hidden],
              torch.einsum("rhd,rhm->hdm", doc, ubar).reshape(H * D, hidden),
              torch.einsum("rhd,rh->hd", doc, has).reshape(H * D)]
    # own storage: outputs must not alias (several are views of one gradient row)
    dphi_k = [t.to(p.dtype, copy=True).contiguous() for t, p in zip(dphi_k, phi_k)]
    dphi_v = [t.to(p.dtype, copy=True).contiguous() for t, p in zip(dphi_v, phi_v)]
    dv_rel = dg.sum(0).to(q.dtype)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dpos, dphi_k, dphi_v, dv_rel


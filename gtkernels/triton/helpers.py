"""``@triton.jit`` helpers shared by the attention and encoding kernels: the tile walk, the pair geometry of
a tile, the ψω/φ MLP on pair chunks, and the per-head products.

Register budget. The MLP is the expensive part (O(HP²) per pair) and it never runs on a whole BM×BN pair tile:
the tile's inputs (rinv) go to a per-program scratch vector (computed RG rows at a time, one pair per thread),
the MLP maps them in chunks of CP pairs, and every layer streams its [CP, HP] slab of pre-activations from
scratch to scratch in [CP, UB] blocks (UB = 32) (K- and N-blocked ``tl.dot``). No tensor wider than [CP, UB]
is live in the MLP and no dot operand exceeds [CP, UB] × [UB, UB], whatever the width (≤ 128) or depth. The
backward recomputes a chunk's forward (one slab per layer kept) and back-propagates the chunk's seed block by
block.
Loops are ``tl.range(..., loop_unroll_factor=1, disable_licm=True)``: an unrolled or hoisted loop body keeps
hundreds of loop-invariant address tensors live, and spills.

Scratch is global memory owned by one program (L1/L2 resident); ``tl.debug_barrier()`` (a CTA barrier) orders
a program's stores before other threads of the program read them.

MLP packing (ψω, φ): ``[w0 (HP) | b0 (HP) | Wt (NH × HP × HP, [in][out]) | bh (NH × HP) | wl (HP) | bl (1)]``,
every width zero-padded to HP (padded units stay exactly 0: act(0) = 0); NH = −1 for a single Linear(1→1)
(``[w | b]``). Gradient rows use the same layout, in float64.
"""
import triton
import triton.language as tl

from .._backends import triton_interpreting
from ..contract import DISTANCE_EPS, PHI_ACTIVATIONS, PSI_ACTIVATIONS, Activation

# activation ids of gtkernels.contract (constexprs of act / act_grad, mlp_map / mlp_backprop)
NONE = tl.constexpr(int(Activation.NONE))
RELU = tl.constexpr(int(Activation.RELU))
GELU = tl.constexpr(int(Activation.GELU))
#: ψω's and φ's (hidden, output) activations.
PSI_HIDDEN_ACT, PSI_OUT_ACT = (tl.constexpr(int(a)) for a in PSI_ACTIVATIONS)
PHI_HIDDEN_ACT, PHI_OUT_ACT = (tl.constexpr(int(a)) for a in PHI_ACTIVATIONS)
#: ε of rinv = 1/(r + ε) (docs/semantics.md).
EPS = tl.constexpr(DISTANCE_EPS)
#: Compiled for a GPU, not run by the interpreter (which has no inline assembly): see :func:`in_loop`.
COMPILED = tl.constexpr(not triton_interpreting())


# ------------------------------------------------------------------------------------------------- tile walk
@triton.jit
def program_scratch(SCR, VECTORS: tl.constexpr, SLABS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                    CP: tl.constexpr, HP: tl.constexpr):
    """This program's scratch: VECTORS pair vectors of BM·BN values, then SLABS MLP slabs [CP, HP]. Returns
    the bases of the first four pair vectors (those from VECTORS on are unused), the base of the slabs, and
    the [BM, BN] offsets of the tile's pairs in a pair vector."""
    NP: tl.constexpr = BM * BN
    base = SCR + tl.program_id(0).to(tl.int64) * (VECTORS * NP + SLABS * CP * HP)
    return base, base + NP, base + 2 * NP, base + 3 * NP, base + VECTORS * NP, tile_offsets(BM, BN)


@triton.jit
def tile_rows(SEG, tile, R, T, MAXA, BM: tl.constexpr):
    """Tile ``tile`` of the grid: molecule b = tile // T, row block t = tile % T. Returns the molecule's rows
    [s0, s1) (seg clamped into [0, R], so a bad seg never reaches memory out of bounds), the tile's first row
    r0 = s0 + t·BM, and ``poison``: the molecule has more rows than the launch's bound MAXA, so its rows beyond
    T·BM are covered by no program and its covered outputs are written NaN instead of a silently partial sum."""
    b = tile // T
    t = tile - b * T
    s0 = tl.minimum(tl.maximum(tl.load(SEG + b), 0), R)
    s1 = tl.minimum(tl.maximum(tl.load(SEG + b + 1), s0), R)
    return s0, s1, s0 + t * BM, (s1 - s0) > MAXA


@triton.jit
def row_ok(VALID, rows, inside, HAS_VALID: tl.constexpr):
    """Rows inside the molecule and not padding."""
    if HAS_VALID:
        v = tl.load(VALID + rows, mask=inside, other=0)
        return inside & (v != 0)
    else:
        return inside


@triton.jit
def tile_offsets(BM: tl.constexpr, BN: tl.constexpr):
    """[BM, BN] offsets of the tile's pairs in a scratch vector (pair p = i·BN + j)."""
    return tl.arange(0, BM)[:, None] * BN + tl.arange(0, BN)[None, :]


@triton.jit
def _group_geometry(POS, VALID, rows, cols, s1, HAS_VALID: tl.constexpr):
    """Pairs (i, j) of a [RG, BN] group of the tile, in float64: allowed (both real, i ≠ j), p_i − p_j (1 on
    excluded pairs, so their gradient stays finite), r, rinv = 1/(r + ε) (0 on excluded pairs, NaN where r
    is not finite: a NaN/Inf coordinate never gives the finite 1/Inf = 0)."""
    rok = row_ok(VALID, rows, rows < s1, HAS_VALID)
    cok = row_ok(VALID, cols, cols < s1, HAS_VALID)
    allowed = rok[:, None] & cok[None, :] & (rows[:, None] != cols[None, :])
    dx = tl.where(allowed, tl.load(POS + rows * 3, mask=rok, other=0.0)[:, None]
                  - tl.load(POS + cols * 3, mask=cok, other=0.0)[None, :], 1.0)
    dy = tl.where(allowed, tl.load(POS + rows * 3 + 1, mask=rok, other=0.0)[:, None]
                  - tl.load(POS + cols * 3 + 1, mask=cok, other=0.0)[None, :], 1.0)
    dz = tl.where(allowed, tl.load(POS + rows * 3 + 2, mask=rok, other=0.0)[:, None]
                  - tl.load(POS + cols * 3 + 2, mask=cok, other=0.0)[None, :], 1.0)
    r = tl.sqrt(dx * dx + dy * dy + dz * dz)
    rinv = tl.where(allowed, tl.where(r < float("inf"), 1.0 / (r + EPS), float("nan")), 0.0)
    return allowed, dx, dy, dz, r, rinv


@triton.jit
def tile_rinv(XS, POS, VALID, r0, c0, s1, BM: tl.constexpr, BN: tl.constexpr, RG: tl.constexpr,
              HAS_VALID: tl.constexpr, CD: tl.constexpr):
    """XS[p] = rinv of the tile's pairs (0 where excluded), computed in groups of RG rows (one pair per
    thread) so the float64 geometry never occupies many registers."""
    cols = c0 + tl.arange(0, BN)
    for g in tl.range(0, BM, RG, loop_unroll_factor=1, disable_licm=True):
        rows = r0 + g + tl.arange(0, RG)
        allowed, dx, dy, dz, r, rinv = _group_geometry(POS, VALID, rows, cols, s1, HAS_VALID)
        tl.store(XS + (g + tl.arange(0, RG))[:, None] * BN + tl.arange(0, BN)[None, :], rinv.to(CD))
    tl.debug_barrier()


@triton.jit
def add_position_grad(DPOS, DXS, POS, VALID, r0, c0, s1, BM: tl.constexpr, BN: tl.constexpr, RG: tl.constexpr,
                      HAS_VALID: tl.constexpr):
    """DPOS[i] += Σ_j 2·DXS_ij · ∂rinv_ij/∂p_i over the tile, ∂rinv/∂p_i = −rinv²/r · (p_i − p_j); DXS
    holds ∂L/∂rinv of a symmetric seed (the factor 2 adds the pair's other orientation). The program owns
    rows r0..r0+BM of DPOS (float64)."""
    cols = c0 + tl.arange(0, BN)
    for g in tl.range(0, BM, RG, loop_unroll_factor=1, disable_licm=True):
        rows = r0 + g + tl.arange(0, RG)
        allowed, dx, dy, dz, r, rinv = _group_geometry(POS, VALID, rows, cols, s1, HAS_VALID)
        drinv = tl.load(DXS + (g + tl.arange(0, RG))[:, None] * BN + tl.arange(0, BN)[None, :])
        c = tl.where(allowed & (r > 0.0), -2.0 * rinv * rinv / r, 0.0) * drinv.to(tl.float64)
        rin = rows < s1
        out = DPOS + rows * 3
        tl.store(out, tl.load(out, mask=rin, other=0.0) + tl.sum(c * dx, axis=1), mask=rin)
        tl.store(out + 1, tl.load(out + 1, mask=rin, other=0.0) + tl.sum(c * dy, axis=1), mask=rin)
        tl.store(out + 2, tl.load(out + 2, mask=rin, other=0.0) + tl.sum(c * dz, axis=1), mask=rin)
    tl.debug_barrier()


@triton.jit
def backprop_to_positions(XS, SD, DXS, PRM, GRD, SLABS, DPOS, POS, VALID, r0, c0, s1, ACT: tl.constexpr,
                          OUT_ACT: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, RG: tl.constexpr,
                          NH: tl.constexpr, HP: tl.constexpr, CP: tl.constexpr, UB: tl.constexpr, CD: tl.constexpr,
                          DD: tl.constexpr, PREC: tl.constexpr, HAS_VALID: tl.constexpr):
    """The tile's symmetric seed SD[p] = ∂L/∂y_p (y = out_act(MLP(rinv)), rinv in XS) back through the MLP: its
    parameter gradients into the program's row GRD, ∂L/∂rinv into DXS, and the position gradient of rows
    r0..r0+BM into DPOS (:func:`add_position_grad`)."""
    mlp_backprop(XS, SD, DXS, PRM, GRD, SLABS, BM * BN, ACT, OUT_ACT, NH, HP, CP, UB, CD, DD, PREC)
    add_position_grad(DPOS, DXS, POS, VALID, r0, c0, s1, BM, BN, RG, HAS_VALID)


@triton.jit
def poison_positions(DPOS, r0, s1, BM: tl.constexpr):
    """DPOS rows r0..min(r0 + BM, s1) = NaN: the tile's molecule has more rows than the launch's bound."""
    rows = r0 + tl.arange(0, BM)
    for comp in tl.static_range(3):
        tl.store(DPOS + rows * 3 + comp, tl.full([BM], float("nan"), tl.float64), mask=rows < s1)


@triton.jit
def in_loop(offs):
    """``offs`` (int32), through an opaque register move. Offsets of a loop body's loads that are loop-invariant
    apart from a scalar (row·HD + h·D) would otherwise be re-associated by LLVM into an invariant 64-bit pointer
    tensor hoisted out of the loop, held in registers across it (8 rows × 2 registers per pointer tensor):
    with it, the address arithmetic stays in the body, where it costs an add per element."""
    if COMPILED:
        return tl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [offs], dtype=tl.int32, is_pure=True, pack=1)
    else:
        return offs


# ---------------------------------------------------------------------------------------------- activations
@triton.jit
def act(z, ACT: tl.constexpr):
    """ReLU, exact (erf) GELU, or identity."""
    if ACT == RELU:
        return tl.where(z < 0.0, 0.0, z)     # NaN stays NaN (tl.maximum may drop it), as torch.relu
    elif ACT == GELU:
        return 0.5 * z * (1.0 + tl.math.erf(z * 0.7071067811865476))
    else:
        return z


@triton.jit
def act_grad(z, g, ACT: tl.constexpr):
    """g · act'(z). GELU'(z) = Φ(z) + z·exp(−z²/2)/√(2π)."""
    if ACT == RELU:
        return tl.where(z > 0.0, g, 0.0)
    elif ACT == GELU:
        return g * (0.5 * (1.0 + tl.math.erf(z * 0.7071067811865476))
                    + z * 0.3989422804014327 * tl.exp(-0.5 * z * z))
    else:
        return g


# -------------------------------------------------------------------------------------------- MLP on chunks
# A chunk of CP pairs goes through the MLP in blocks of UB units: every layer reads its input slab [CP, HP]
# (pre-activations) from scratch and writes its output slab, one [CP, UB] block at a time, so no tensor wider
# than [CP, UB] is ever held in registers, whatever HP (≤ 128) and depth. Dots are [CP, UB] × [UB, UB] (DD
# operands, CD accumulate).
@triton.jit
def _slab(S, p, u0, HP: tl.constexpr, UB: tl.constexpr):
    """Pointers [CP, UB] of units u0..u0+UB of a slab [CP, HP] (row p = pair of the chunk)."""
    return S + p[:, None] * HP + (u0 + tl.arange(0, UB))[None, :]


@triton.jit
def _layer_fwd(SRC, DST, PRM, layer, ACT: tl.constexpr, NH: tl.constexpr, HP: tl.constexpr, CP: tl.constexpr,
               UB: tl.constexpr, CD: tl.constexpr, DD: tl.constexpr, PREC: tl.constexpr):
    """Hidden layer ``layer``: DST = act(SRC) Wt + b, slab to slab."""
    p = tl.arange(0, CP)
    u = tl.arange(0, UB)
    W = PRM + 2 * HP + layer * HP * HP
    bias = PRM + 2 * HP + NH * HP * HP + layer * HP
    for ob in tl.range(0, HP, UB, loop_unroll_factor=1, disable_licm=True):
        acc = tl.zeros([CP, UB], dtype=CD)
        for ib in tl.range(0, HP, UB, loop_unroll_factor=1, disable_licm=True):
            a = act(tl.load(_slab(SRC, p, ib, HP, UB)), ACT)
            w = tl.load(W + (ib + u)[:, None] * HP + (ob + u)[None, :])
            acc += tl.dot(a.to(DD), w.to(DD), input_precision=PREC, out_dtype=CD)
        tl.store(_slab(DST, p, ob, HP, UB), acc + tl.load(bias + ob + u)[None, :])
    tl.debug_barrier()


@triton.jit
def mlp_chunk_fwd(x_ptr, PRM, SLABS, ACT: tl.constexpr, NH: tl.constexpr, HP: tl.constexpr, CP: tl.constexpr,
                  UB: tl.constexpr, CD: tl.constexpr, DD: tl.constexpr, PREC: tl.constexpr, KEEP: tl.constexpr):
    """MLP of the chunk's inputs (``x_ptr``: CP scratch values) up to the last Linear, before any output
    activation: returns zl [CP]. Slab l of SLABS receives the pre-activations of layer l (KEEP: all NH + 1
    kept, for the backward; else two slabs used in turn)."""
    p = tl.arange(0, CP)
    u = tl.arange(0, UB)
    x = tl.load(x_ptr + p)
    for ob in tl.range(0, HP, UB, loop_unroll_factor=1, disable_licm=True):
        z0 = x[:, None] * tl.load(PRM + ob + u)[None, :] + tl.load(PRM + HP + ob + u)[None, :]
        tl.store(_slab(SLABS, p, ob, HP, UB), z0)
    tl.debug_barrier()
    # a runtime loop: one copy of the layer's code, whatever the depth
    for layer in tl.range(NH, loop_unroll_factor=1, disable_licm=True):
        if KEEP:
            src = SLABS + layer * CP * HP
            dst = src + CP * HP
        else:
            src = SLABS + (layer % 2) * CP * HP
            dst = SLABS + ((layer + 1) % 2) * CP * HP
        _layer_fwd(src, dst, PRM, layer, ACT, NH, HP, CP, UB, CD, DD, PREC)
    last = SLABS + ((NH if KEEP else NH % 2) * CP * HP)
    off_l = 2 * HP + NH * HP * HP + NH * HP
    zl = tl.zeros([CP], dtype=CD) + tl.load(PRM + off_l + HP)
    for ob in tl.range(0, HP, UB, loop_unroll_factor=1, disable_licm=True):
        zl += tl.sum(act(tl.load(_slab(last, p, ob, HP, UB)), ACT) * tl.load(PRM + off_l + ob + u)[None, :], axis=1)
    return zl


@triton.jit
def mlp_map(XS, YS, PRM, SLABS, NP: tl.constexpr, ACT: tl.constexpr, OUT_ACT: tl.constexpr, NH: tl.constexpr,
            HP: tl.constexpr, CP: tl.constexpr, UB: tl.constexpr, CD: tl.constexpr, DD: tl.constexpr,
            PREC: tl.constexpr):
    """YS[p] = out_act(MLP(XS[p])) for the NP pairs of the scratch vectors XS, YS, in chunks of CP pairs
    (SLABS: two [CP, HP] slabs)."""
    for c in tl.range(0, NP, CP, loop_unroll_factor=1, disable_licm=True):
        p = c + tl.arange(0, CP)
        if NH < 0:   # a single Linear(1→1)
            zl = tl.load(XS + p) * tl.load(PRM) + tl.load(PRM + HP)
        else:
            zl = mlp_chunk_fwd(XS + c, PRM, SLABS, ACT, NH, HP, CP, UB, CD, DD, PREC, False)
        tl.store(YS + p, act(zl, OUT_ACT))
    tl.debug_barrier()


@triton.jit
def _add_grad(GRD, offs, g):
    """Read-modify-write of this program's float64 gradient row (one owner: no atomics)."""
    tl.store(GRD + offs, tl.load(GRD + offs) + g.to(tl.float64))


@triton.jit
def _layer_bwd(ZIN, G, GNEXT, PRM, GRD, layer, ACT: tl.constexpr, NH: tl.constexpr, HP: tl.constexpr,
               CP: tl.constexpr, UB: tl.constexpr, CD: tl.constexpr, DD: tl.constexpr, PREC: tl.constexpr):
    """Back through hidden layer ``layer`` (z_out = act(z_in) Wt + b) for G = ∂L/∂z_out: dWt += act(z_in)ᵀ G
    and db += Σ_p G into GRD, and GNEXT = ∂L/∂z_in = (G Wtᵀ) ⊙ act'(z_in)."""
    p = tl.arange(0, CP)
    u = tl.arange(0, UB)
    W = PRM + 2 * HP + layer * HP * HP
    gw = 2 * HP + layer * HP * HP
    gb = 2 * HP + NH * HP * HP + layer * HP
    for ib in tl.range(0, HP, UB, loop_unroll_factor=1, disable_licm=True):
        a_t = act(tl.load(ZIN + p[None, :] * HP + (ib + u)[:, None]), ACT)                  # [UB, CP]
        dzin = tl.zeros([CP, UB], dtype=CD)
        for ob in tl.range(0, HP, UB, loop_unroll_factor=1, disable_licm=True):
            g = tl.load(_slab(G, p, ob, HP, UB))                                              # [CP, UB]
            dw = tl.dot(a_t.to(DD), g.to(DD), input_precision=PREC, out_dtype=CD)            # [UB, UB]
            _add_grad(GRD, gw + (ib + u)[:, None] * HP + (ob + u)[None, :], dw)
            w_t = tl.load(W + (ib + u)[None, :] * HP + (ob + u)[:, None])                     # [UB(o), UB(i)]
            dzin += tl.dot(g.to(DD), w_t.to(DD), input_precision=PREC, out_dtype=CD)
        zin = tl.load(_slab(ZIN, p, ib, HP, UB))
        tl.store(_slab(GNEXT, p, ib, HP, UB), act_grad(zin, dzin, ACT))
    for ob in tl.range(0, HP, UB, loop_unroll_factor=1, disable_licm=True):
        _add_grad(GRD, gb + ob + u, tl.sum(tl.load(_slab(G, p, ob, HP, UB)), axis=0))
    tl.debug_barrier()


@triton.jit
def mlp_backprop(XS, SEED, DXS, PRM, GRD, SLABS, NP: tl.constexpr, ACT: tl.constexpr, OUT_ACT: tl.constexpr,
                 NH: tl.constexpr, HP: tl.constexpr, CP: tl.constexpr, UB: tl.constexpr, CD: tl.constexpr,
                 DD: tl.constexpr, PREC: tl.constexpr):
    """For the NP pairs of the scratch vectors, with SEED[p] = ∂L/∂y_p (y = out_act(MLP(x))): accumulates
    every parameter gradient into this program's row GRD and writes DXS[p] = ∂L/∂x_p. Chunks of CP pairs;
    each recomputes its forward into SLABS (NH + 1 pre-activation slabs, then two gradient slabs)."""
    q = tl.arange(0, CP)
    u = tl.arange(0, UB)
    off_l = 2 * HP + NH * HP * HP + NH * HP
    G0 = SLABS + (NH + 1) * CP * HP
    G1 = G0 + CP * HP
    for c in tl.range(0, NP, CP, loop_unroll_factor=1, disable_licm=True):
        p = c + q
        x = tl.load(XS + p)
        seed = tl.load(SEED + p)
        if NH < 0:   # a single Linear(1→1): y = out_act(w x + b)
            zl = x * tl.load(PRM) + tl.load(PRM + HP)
            dzl = act_grad(zl, seed, OUT_ACT)
            _add_grad(GRD, 0, tl.sum(dzl * x, axis=0))
            _add_grad(GRD, HP, tl.sum(dzl, axis=0))
            dx = dzl * tl.load(PRM)
        else:
            zl = mlp_chunk_fwd(XS + c, PRM, SLABS, ACT, NH, HP, CP, UB, CD, DD, PREC, True)
            dzl = act_grad(zl, seed, OUT_ACT)
            # output layer (sums over the chunk in float64: no later layer averages their rounding), and
            # G = ∂L/∂z of the last hidden pre-activation
            _add_grad(GRD, off_l + HP, tl.sum(dzl.to(tl.float64), axis=0))
            last = SLABS + NH * CP * HP
            for ob in tl.range(0, HP, UB, loop_unroll_factor=1, disable_licm=True):
                z = tl.load(_slab(last, q, ob, HP, UB))
                _add_grad(GRD, off_l + ob + u, tl.sum(dzl.to(tl.float64)[:, None] * act(z, ACT).to(tl.float64),
                                                      axis=0))
                tl.store(_slab(G0, q, ob, HP, UB),
                         act_grad(z, dzl[:, None] * tl.load(PRM + off_l + ob + u)[None, :], ACT))
            tl.debug_barrier()
            for back in tl.range(NH, loop_unroll_factor=1, disable_licm=True):    # a runtime loop, as in the forward
                layer = NH - 1 - back
                g_in = G0 + (back % 2) * CP * HP
                g_out = G0 + ((back + 1) % 2) * CP * HP
                _layer_bwd(SLABS + layer * CP * HP, g_in, g_out, PRM, GRD, layer, ACT, NH, HP, CP, UB, CD, DD, PREC)
            G = G0 if NH % 2 == 0 else G1    # ∂L/∂z0, z0 = x w0 + b0
            dx = tl.zeros([CP], dtype=CD)
            for ib in tl.range(0, HP, UB, loop_unroll_factor=1, disable_licm=True):
                g = tl.load(_slab(G, q, ib, HP, UB))
                _add_grad(GRD, ib + u, tl.sum(g * x[:, None], axis=0))
                _add_grad(GRD, HP + ib + u, tl.sum(g, axis=0))
                dx += tl.sum(g * tl.load(PRM + ib + u)[None, :], axis=1)
            tl.debug_barrier()   # the slabs are rewritten by the next chunk
        tl.store(DXS + p, dx)
    tl.debug_barrier()


# ------------------------------------------------------------------------------------------- per-head products
@triton.jit
def scores(A, B, roff, coff, rmask, cmask, D, DP: tl.constexpr, SMALL: tl.constexpr, DD: tl.constexpr,
           CD: tl.constexpr, PREC: tl.constexpr):
    """[BM, BN] = a_i·b_j over one head: rows ``A + roff`` ([BM, 1]) and ``B + coff`` ([1, BN]) of D values
    each (masked rows read as 0). Small head dims: a sum of outer products of columns; else K-blocked tl.dot."""
    if SMALL:
        acc = tl.zeros([roff.shape[0], coff.shape[1]], dtype=CD)
        for d in tl.static_range(DP):
            a = tl.load(A + roff + d, mask=rmask & (roff * 0 + d < D), other=0.0).to(CD)
            b = tl.load(B + coff + d, mask=cmask & (coff * 0 + d < D), other=0.0).to(CD)
            acc += a * b
        return acc
    elif DD == tl.float64:   # float64: blocks of 4 head units, Σ_d a_id·b_jd as a broadcast sum (no fp64 MMA:
        # triton 3.6 cannot lower fp64 tl.dot of these shapes, and float64 is the exactness dtype, not a fast one)
        acc = tl.zeros([roff.shape[0], coff.shape[1]], dtype=CD)
        d4 = tl.arange(0, 4)[None, None, :]
        for d0 in tl.range(0, DP, 4, loop_unroll_factor=1, disable_licm=True):
            m = d0 + d4 < D
            a = tl.load(A + roff[:, :, None] + d0 + d4, mask=rmask[:, :, None] & m, other=0.0)   # [BM, 1, 4]
            b = tl.load(B + coff[:, :, None] + d0 + d4, mask=cmask[:, :, None] & m, other=0.0)   # [1, BN, 4]
            acc += tl.sum(a * b, axis=2)
        return acc
    else:   # K-blocks of 16 head units read straight from q / k: small dot operands
        acc = tl.zeros([roff.shape[0], coff.shape[1]], dtype=CD)
        du = tl.arange(0, 16)
        for d0 in tl.range(0, DP, 16, loop_unroll_factor=1, disable_licm=True):   # one block live at a time
            m = (d0 + du < D)[None, :]
            a = tl.load(A + roff + (d0 + du)[None, :], mask=rmask & m, other=0.0)
            b = tl.load(B + tl.trans(coff) + (d0 + du)[None, :], mask=tl.trans(cmask) & m, other=0.0)
            acc += tl.dot(a.to(DD), tl.trans(b.to(DD)), input_precision=PREC, out_dtype=CD)
        return acc


@triton.jit
def accumulate(SRC_OLD, DST, roff, rmask, old, alpha, post, w, B, coff, cmask, D, DP: tl.constexpr,
               SMALL: tl.constexpr, DD: tl.constexpr, CD: tl.constexpr, PREC: tl.constexpr):
    """DST[i] = (old_i ? SRC_OLD[i]·alpha_i : 0) + Σ_j w_ij b_j, times post_i, for the rows ``roff`` [BM, 1]
    (D values each, stored where rmask) and the rows ``B + coff`` [1, BN] of b; w [BM, BN] in CD; old, alpha
    and post [BM, 1]. SRC_OLD and DST are the same row offsets of two buffers (or one)."""
    if SMALL:
        for d in tl.static_range(DP):
            b = tl.load(B + coff + d, mask=cmask & (coff * 0 + d < D), other=0.0).to(CD)
            m = rmask & (roff * 0 + d < D)
            acc = tl.load(SRC_OLD + roff + d, mask=m & old, other=0.0).to(CD) * alpha
            acc += tl.sum(w * b, axis=1, keep_dims=True)
            tl.store(DST + roff + d, (acc * post).to(DST.dtype.element_ty), mask=m)
    elif DD == tl.float64:   # float64: blocks of 4 output units, Σ_j w_ij·b_jd as a broadcast sum (see scores)
        d4 = tl.arange(0, 4)
        for d0 in tl.range(0, DP, 4, loop_unroll_factor=1, disable_licm=True):
            cm = (d0 + d4 < D)[None, :]
            m = rmask & cm
            b = tl.load(B + coff[:, :, None] + d0 + d4[None, None, :], mask=cmask[:, :, None] & cm[:, None, :],
                        other=0.0)                                                            # [1, BN, 4]
            acc = tl.load(SRC_OLD + roff + (d0 + d4)[None, :], mask=m & old, other=0.0).to(CD)
            acc = acc * alpha + tl.sum(w[:, :, None] * b, axis=1)
            tl.store(DST + roff + (d0 + d4)[None, :], (acc * post).to(DST.dtype.element_ty), mask=m)
    else:   # blocks of 16 output units: [BM, 16] accumulators
        wd = w.to(DD)
        du = tl.arange(0, 16)
        for d0 in tl.range(0, DP, 16, loop_unroll_factor=1, disable_licm=True):
            cm = (d0 + du < D)[None, :]
            m = rmask & cm
            b = tl.load(B + tl.trans(coff) + (d0 + du)[None, :], mask=tl.trans(cmask) & cm, other=0.0)
            acc = tl.load(SRC_OLD + roff + (d0 + du)[None, :], mask=m & old, other=0.0).to(CD)
            acc = acc * alpha + tl.dot(wd, b.to(DD), input_precision=PREC, out_dtype=CD)
            tl.store(DST + roff + (d0 + du)[None, :], (acc * post).to(DST.dtype.element_ty), mask=m)

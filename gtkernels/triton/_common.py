"""Shared pieces of the Triton kernels: host-side packing of the MLP weights and program tables, and the
``@triton.jit`` helpers for the per-pair maths (inverse distances, the tile MLP forward and backward).

MLP packing (ψω and φ). ``params = [W0, b0, W1, b1, ..., Wn, bn]`` in ``nn.Linear`` layout, W0: [h, 1],
hidden Wl: [h, h], Wn: [1, h]; NH = n − 2 hidden h→h layers (0 ≤ NH ≤ 3; NH = −1 for a single
Linear(1→1), whose buffer is just [w | b] padded to HP each). Every width is zero-padded to
HP = max(16, next power of two) (50 → 64) so the hidden layers are ``tl.dot`` on [pairs, HP] × [HP, HP]; with
zero weights and biases the padded units stay exactly 0 (ReLU(0) = GELU(0) = 0). One flat buffer, in the
compute dtype (float32, or float64 for float64 inputs):

    [w0 (HP) | b0 (HP) | Wh (NH × HP × HP, transposed: [in][out]) | bh (NH × HP) | wl (HP) | bl (1)]

Gradient buffers (float64) use the same layout (one row per program, reduced afterwards with ``torch.sum`` in a
fixed order: deterministic, no atomics); :func:`unpack_grads` turns a row back into ``nn.Linear`` layout.

Program tables. One program per (molecule, row block): int64 ``[P, 3]`` rows (segment start, segment end,
first row of the block). Blocks: BM = BN = 16 for molecules of at most 16 atoms, 32 beyond (a QM9 molecule,
≤ 29 atoms, is then one tile, and a 5-atom one does not pad to 32 or 128); the ψ tile is [BM·BN, HP] (64 Ki
values for 32 × 32 × 64, with up to 4 such pre-activation tiles live in the backward), which is the register
budget that caps the block size below the 64 or 128 of FlashAttention. No autotuning yet (the interpreter
cannot autotune; on a GPU, tune BLOCK_OVERRIDE and :func:`launch_options`).
"""
from __future__ import annotations

import os
from typing import List, Sequence, Tuple

import torch
import triton
import triton.language as tl

#: ``tl.dot`` input precision for float32 operands: "ieee" (exact float32, the default) or "tf32"
#: (tensor cores, ~1e-3 relative error; opt-in). float64 always uses "ieee".
PRECISION = "ieee"

DISTANCE_EPS = 1e-16
MAX_HIDDEN = 3


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; float32/16/bfloat16 compute (and accumulate) in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def tl_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def dot_precision(dtype: torch.dtype, precision: str) -> str:
    return "ieee" if dtype == torch.float64 else precision


#: Force one block size (16, 32 or 64) for every shape, e.g. to tune on a GPU; None = :func:`block_size`.
BLOCK_OVERRIDE = None


def block_size(max_atoms: int) -> int:
    """Query/key block for the largest molecule: 16 up to 16 atoms, 32 beyond (see module docstring)."""
    if BLOCK_OVERRIDE is not None:
        return BLOCK_OVERRIDE
    return 16 if max_atoms <= 16 else 32


def launch_options(block: int) -> dict:
    """Warps per program (ignored by the interpreter): the [block², HP] ψ tile needs more threads at 32."""
    return {"num_warps": 4 if block <= 16 else 8}


def hidden_pad(params: Sequence[torch.Tensor]) -> int:
    width = max([p.shape[0] for p in params[:-2:2]], default=1)
    return max(16, triton.next_power_of_2(width))


def pack_mlp(params: Sequence[torch.Tensor], dtype: torch.dtype) -> Tuple[torch.Tensor, int, int]:
    """Pack ``[W0, b0, ..., Wn, bn]`` into the flat zero-padded buffer. Returns ``(buffer, NH, HP)``."""
    n = len(params) // 2
    if n - 2 > MAX_HIDDEN:
        raise ValueError(f"backend='triton' supports MLPs of at most {MAX_HIDDEN + 2} Linear layers, got {n}; "
                         "use backend='reference'")
    nh, hp = n - 2, hidden_pad(params)
    dev = params[0].device
    if n == 1:  # Linear(1→1): NH = −1, buffer [w (HP) | b (HP)], only the first entries used
        flat = torch.zeros(2 * hp, dtype=dtype, device=dev)
        flat[0], flat[hp] = params[0].reshape(()).to(dtype), params[1].reshape(()).to(dtype)
        return flat, nh, hp
    w0 = torch.zeros(hp, dtype=dtype, device=dev)
    b0 = torch.zeros(hp, dtype=dtype, device=dev)
    w0[:params[0].shape[0]] = params[0][:, 0].to(dtype)
    b0[:params[1].shape[0]] = params[1].to(dtype)
    wh = torch.zeros(max(nh, 0), hp, hp, dtype=dtype, device=dev)
    bh = torch.zeros(max(nh, 0), hp, dtype=dtype, device=dev)
    for layer in range(nh):
        w, b = params[2 * layer + 2], params[2 * layer + 3]
        wh[layer, :w.shape[1], :w.shape[0]] = w.t().to(dtype)
        bh[layer, :b.shape[0]] = b.to(dtype)
    wl = torch.zeros(hp, dtype=dtype, device=dev)
    wl[:params[-2].shape[1]] = params[-2][0].to(dtype)
    bl = params[-1].reshape(1).to(dtype)
    return torch.cat([w0, b0, wh.reshape(-1), bh.reshape(-1), wl, bl]).contiguous(), nh, hp


def unpack_grads(flat: torch.Tensor, params: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """Gradient buffer row (packed layout) → ``[dW0, db0, ...]`` shaped and typed like ``params``."""
    n = len(params) // 2
    nh, hp = n - 2, hidden_pad(params)
    if n == 1:
        out = [flat[:1].reshape(1, 1), flat[hp:hp + 1]]
        return [torch.empty_like(p).copy_(g) for g, p in zip(out, params)]
    h0 = params[0].shape[0]
    out = [flat[:h0].reshape(h0, 1), flat[hp:hp + h0]]
    off_wh, off_bh = 2 * hp, 2 * hp + nh * hp * hp
    for layer in range(nh):
        w = params[2 * layer + 2]
        gw = flat[off_wh + layer * hp * hp:off_wh + (layer + 1) * hp * hp].reshape(hp, hp)
        out += [gw[:w.shape[1], :w.shape[0]].t(), flat[off_bh + layer * hp:off_bh + layer * hp + w.shape[0]]]
    off_wl = off_bh + nh * hp
    out += [flat[off_wl:off_wl + params[-2].shape[1]].reshape(1, -1), flat[off_wl + hp:off_wl + hp + 1]]
    return [torch.empty_like(p).copy_(g) for g, p in zip(out, params)]  # own storage: outputs must not alias


def program_table(seg: torch.Tensor, block: int) -> torch.Tensor:
    """int64 ``[P, 3]``: (segment start, segment end, first row) of every (molecule, row block)."""
    seg = seg.to(torch.int64)
    counts = seg[1:] - seg[:-1]
    nblocks = (counts + block - 1) // block
    total = int(nblocks.sum())
    mol = torch.repeat_interleave(torch.arange(counts.numel(), device=seg.device), nblocks, output_size=total)
    first = torch.cumsum(nblocks, 0) - nblocks
    start, end = seg[:-1][mol], seg[1:][mol]
    row0 = start + (torch.arange(total, device=seg.device) - first[mol]) * block
    return torch.stack([start, end, row0], dim=1).contiguous()


def max_atoms(seg: torch.Tensor) -> int:
    return int((seg[1:] - seg[:-1]).max()) if seg.numel() > 1 else 0


def valid_arg(valid, ref: torch.Tensor):
    """(pointer tensor, HAS_VALID) for an optional bool ``valid [R]``."""
    if valid is None:
        return ref, False
    return valid.contiguous(), True


# ------------------------------------------------------------------------------------------------ jit helpers
@triton.jit
def _row_ok(VALID, rows, inside, HAS_VALID: tl.constexpr):
    """Rows inside the segment and not padding."""
    if HAS_VALID:
        v = tl.load(VALID + rows, mask=inside, other=0)
        return inside & (v != 0)
    else:
        return inside


@triton.jit
def _load_pos(POS, rows, ok):
    """float64 coordinates of ``rows`` (0 where not ok, so NaN coordinates of padding never enter)."""
    x = tl.load(POS + rows * 3 + 0, mask=ok, other=0.0)
    y = tl.load(POS + rows * 3 + 1, mask=ok, other=0.0)
    z = tl.load(POS + rows * 3 + 2, mask=ok, other=0.0)
    return x, y, z


@triton.jit
def _pair_geometry(xi, yi, zi, xj, yj, zj, rows, cols, rok, cok):
    """Pairs (i, j) of a tile, all in float64: allowed (both real, i ≠ j), difference vector p_i − p_j (1 on
    excluded pairs, so their gradient stays finite), r, rinv = 1/(r + 1e-16) (0 on excluded pairs)."""
    allowed = rok[:, None] & cok[None, :] & (rows[:, None] != cols[None, :])
    dx = tl.where(allowed, xi[:, None] - xj[None, :], 1.0)
    dy = tl.where(allowed, yi[:, None] - yj[None, :], 1.0)
    dz = tl.where(allowed, zi[:, None] - zj[None, :], 1.0)
    r = tl.sqrt(dx * dx + dy * dy + dz * dz)
    eps = tl.full([], 1e-16, tl.float64)
    rinv = tl.where(allowed, 1.0 / (r + eps), 0.0)
    return allowed, dx, dy, dz, r, rinv


@triton.jit
def _rinv_grad_coeff(allowed, r, rinv, drinv):
    """d rinv / d p_i = −rinv²/r · (p_i − p_j); returns the float64 factor drinv · (−rinv²/r), 0 at r = 0."""
    c = tl.where(allowed & (r > 0.0), -rinv * rinv / r, 0.0)
    return c * drinv.to(tl.float64)


@triton.jit
def _act(z, ACT: tl.constexpr):
    """ACT 0: ReLU; 1: exact (erf) GELU."""
    if ACT == 0:
        return tl.maximum(z, 0.0)
    else:
        c = tl.full([], 0.7071067811865476, z.dtype)
        return 0.5 * z * (1.0 + tl.math.erf(z * c))


@triton.jit
def _act_bwd(z, da, ACT: tl.constexpr):
    """da · act'(z). GELU'(z) = Φ(z) + z·exp(−z²/2)/√(2π)."""
    if ACT == 0:
        return tl.where(z > 0.0, da, 0.0)
    else:
        c = tl.full([], 0.7071067811865476, z.dtype)
        c2 = tl.full([], 0.3989422804014327, z.dtype)
        return da * (0.5 * (1.0 + tl.math.erf(z * c)) + z * c2 * tl.exp(-0.5 * z * z))


@triton.jit
def _hidden_fwd(a, PRM, layer, NH: tl.constexpr, HP: tl.constexpr, PREC: tl.constexpr):
    """Pre-activation of hidden layer ``layer``: a [P, HP] @ Wt [HP, HP] + b."""
    k = tl.arange(0, HP)
    w = tl.load(PRM + 2 * HP + layer * HP * HP + k[:, None] * HP + k[None, :])
    b = tl.load(PRM + 2 * HP + NH * HP * HP + layer * HP + k)
    return tl.dot(a, w, input_precision=PREC) + b[None, :]


@triton.jit
def _mlp_fwd(x, PRM, NH: tl.constexpr, HP: tl.constexpr, ACT: tl.constexpr, PREC: tl.constexpr):
    """MLP on a flat tile of pair inputs ``x [P]``. Returns the last layer's output before any output
    activation ``[P]`` and the hidden pre-activations z0..z3 ``[P, HP]`` (unused ones are copies of z0)."""
    if NH < 0:  # a single Linear(1→1)
        zl = x * tl.load(PRM) + tl.load(PRM + HP)
        z0 = zl[:, None]
        z1 = z0
        z2 = z0
        z3 = z0
    else:
        k = tl.arange(0, HP)
        w0 = tl.load(PRM + k)
        b0 = tl.load(PRM + HP + k)
        z0 = x[:, None] * w0[None, :] + b0[None, :]
        z1 = z0
        z2 = z0
        z3 = z0
        a = _act(z0, ACT)
        if NH >= 1:
            z1 = _hidden_fwd(a, PRM, 0, NH, HP, PREC)
            a = _act(z1, ACT)
        if NH >= 2:
            z2 = _hidden_fwd(a, PRM, 1, NH, HP, PREC)
            a = _act(z2, ACT)
        if NH >= 3:
            z3 = _hidden_fwd(a, PRM, 2, NH, HP, PREC)
            a = _act(z3, ACT)
        off_wl = 2 * HP + NH * HP * HP + NH * HP
        wl = tl.load(PRM + off_wl + k)
        bl = tl.load(PRM + off_wl + HP)
        zl = tl.sum(a * wl[None, :], axis=1) + bl
    return zl, z0, z1, z2, z3


@triton.jit
def _hidden_bwd(da, z, zprev, PRM, GRD, layer, NH: tl.constexpr, HP: tl.constexpr, ACT: tl.constexpr,
                PREC: tl.constexpr):
    """Back through hidden layer ``layer``: accumulates dWt = act(zprev)ᵀ dz and db = Σ dz into this program's
    gradient row GRD, returns the gradient of the previous activation dz Wtᵀ."""
    dz = _act_bwd(z, da, ACT)
    aprev = _act(zprev, ACT)
    k = tl.arange(0, HP)
    widx = 2 * HP + layer * HP * HP + k[:, None] * HP + k[None, :]
    bidx = 2 * HP + NH * HP * HP + layer * HP + k
    gw = tl.dot(tl.trans(aprev), dz, input_precision=PREC)
    tl.store(GRD + widx, tl.load(GRD + widx) + gw)
    tl.store(GRD + bidx, tl.load(GRD + bidx) + tl.sum(dz, axis=0))
    w = tl.load(PRM + widx)
    return tl.dot(dz, tl.trans(w), input_precision=PREC)


@triton.jit
def _mlp_bwd(x, dzl, z0, z1, z2, z3, PRM, GRD, NH: tl.constexpr, HP: tl.constexpr, ACT: tl.constexpr,
             PREC: tl.constexpr):
    """Backward of :func:`_mlp_fwd` for the seed ``dzl [P]`` (gradient of the last layer's output):
    accumulates every parameter gradient into GRD (read-modify-write of this program's own row) and
    returns dx ``[P]``."""
    if NH < 0:  # a single Linear(1→1)
        tl.store(GRD, tl.load(GRD) + tl.sum(dzl * x, axis=0))
        tl.store(GRD + HP, tl.load(GRD + HP) + tl.sum(dzl, axis=0))
        dx = dzl * tl.load(PRM)
    else:
        k = tl.arange(0, HP)
        if NH == 0:
            a = _act(z0, ACT)
        elif NH == 1:
            a = _act(z1, ACT)
        elif NH == 2:
            a = _act(z2, ACT)
        else:
            a = _act(z3, ACT)
        off_wl = 2 * HP + NH * HP * HP + NH * HP
        wl = tl.load(PRM + off_wl + k)
        # the output layer's gradients are sums over every pair of the tile with no later layer to average
        # the rounding: summed in float64 (GRD is float64)
        gwl = tl.sum((dzl[:, None] * a).to(tl.float64), axis=0)
        tl.store(GRD + off_wl + k, tl.load(GRD + off_wl + k) + gwl)
        tl.store(GRD + off_wl + HP, tl.load(GRD + off_wl + HP) + tl.sum(dzl.to(tl.float64), axis=0))
        da = dzl[:, None] * wl[None, :]
        if NH >= 3:
            da = _hidden_bwd(da, z3, z2, PRM, GRD, 2, NH, HP, ACT, PREC)
        if NH >= 2:
            da = _hidden_bwd(da, z2, z1, PRM, GRD, 1, NH, HP, ACT, PREC)
        if NH >= 1:
            da = _hidden_bwd(da, z1, z0, PRM, GRD, 0, NH, HP, ACT, PREC)
        dz0 = _act_bwd(z0, da, ACT)
        tl.store(GRD + k, tl.load(GRD + k) + tl.sum(dz0 * x[:, None], axis=0))
        tl.store(GRD + HP + k, tl.load(GRD + HP + k) + tl.sum(dz0, axis=0))
        w0 = tl.load(PRM + k)
        dx = tl.sum(dz0 * w0[None, :], axis=1)
    return dx

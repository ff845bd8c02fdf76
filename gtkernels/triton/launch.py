"""Host side of the Triton kernels: dtypes, MLP packing on the device, launch geometry (tiles, persistent
grid, chunk sizes, scratch), input checks and the device guard. Nothing here reads a device tensor's values:
a launch makes no host synchronisation (the grid comes from shapes and the host-known ``max_atoms``).
"""
from __future__ import annotations

import contextlib
import functools
import warnings
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._backends import triton_interpreting
from ..contract import MAX_MLP_HIDDEN, MAX_MLP_LAYERS, MAX_MLP_WIDTH

#: Largest head dimension d_k (padded to a power of two).
MAX_HEAD_DIM = 128
#: Head dims up to this are computed as broadcast sums instead of tl.dot (whose K must be ≥ 16).
SMALL_HEAD_DIM = 4
#: MLP units per block: a chunk goes through each layer in [CP, UB] blocks.
UNIT_BLOCK = 32
#: Pair-chunk budget of the MLP, in [CP, HP] elements of the compute dtype per chunk (registers).
CHUNK_ELEMS = {torch.float32: 2048, torch.float64: 512}
#: Under the interpreter, which runs every block op in numpy, bigger chunks and K-blocks (fewer, larger ops;
#: the same kernel code with other constexprs — the AOT gate compiles the GPU ones).
INTERPRETER_CHUNK_SCALE, INTERPRETER_UNIT_BLOCK = 8, 64
#: Programs per SM of the persistent grid.
PROGRAMS_PER_SM = 4
#: Programs of the persistent grid under the interpreter (small, so the tests run the tile loop).
INTERPRETER_PROGRAMS = 3


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; float32/float16/bfloat16 compute and accumulate in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


_TL = {torch.float64: tl.float64, torch.float32: tl.float32, torch.float16: tl.float16,
       torch.bfloat16: tl.bfloat16}


@dataclass(frozen=True)
class Numerics:
    """Triton dtypes and dot precisions of one launch: CD the compute (accumulation) dtype, DD the dtype of
    tl.dot operands (the inputs' own for float16/bfloat16: tensor cores), PREC tl.dot's input_precision in ψω/φ,
    HPREC in the per-head products. ``precision="tf32"`` puts ψω/φ's hidden layers on TF32 tensor cores and
    keeps the per-head products exact, as the cuda backend does."""
    cd: torch.dtype
    CD: object
    DD: object
    PREC: str
    HPREC: str


def numerics(dtype: torch.dtype, precision: str) -> Numerics:
    """float64: exact DMMA/FMA dots; float32: "ieee" (exact) or "tf32" (tensor cores); float16/bfloat16:
    native tensor-core dots with float32 accumulation."""
    if precision not in ("ieee", "tf32"):
        raise ValueError(f"precision must be 'ieee' or 'tf32', got {precision!r}")
    cd = compute_dtype(dtype)
    if dtype in (torch.float64, torch.float32):
        return Numerics(cd, _TL[cd], _TL[dtype], "ieee" if dtype == torch.float64 else precision, "ieee")
    return Numerics(cd, _TL[cd], _TL[dtype], "tf32", "tf32")   # (ignored by float16/bfloat16 dots)


def hidden_pad(params: Sequence[Tensor]) -> int:
    """HP: the widest layer of ``[W0, b0, ..., Wn, bn]`` as a power of two ≥ 16."""
    width = max([p.shape[0] for p in params[:-2:2]], default=1)
    return max(16, triton.next_power_of_2(width))


def check_mlp(params: Sequence[Tensor]) -> Tuple[int, int]:
    """(NH, HP) of an MLP the kernels can run, else ValueError."""
    n = len(params) // 2
    hp = hidden_pad(params)
    if n - 2 > MAX_MLP_HIDDEN or hp > MAX_MLP_WIDTH:
        raise ValueError(f"backend='triton' supports MLPs of at most {MAX_MLP_LAYERS} Linear layers of width "
                         f"<= {MAX_MLP_WIDTH}, got {n} layers of width up to {hp}; use backend='reference'")
    return n - 2, hp


def pack_mlp(params: Sequence[Tensor], dtype: torch.dtype) -> Tuple[Tensor, int, int]:
    """``[W0, b0, ..., Wn, bn]`` (nn.Linear layout) → the flat zero-padded buffer of :mod:`.helpers`, built
    on the parameters' device with tensor ops (no host copy). Returns ``(buffer, NH, HP)``."""
    nh, hp = check_mlp(params)
    dev = params[0].device
    if nh < 0:  # Linear(1→1): [w (HP) | b (HP)], only the first entries used
        flat = torch.zeros(2, hp, dtype=dtype, device=dev)
        flat[0, :1] = params[0].reshape(1).to(dtype)
        flat[1, :1] = params[1].reshape(1).to(dtype)
        return flat.reshape(-1), nh, hp
    w0 = torch.zeros(2, hp, dtype=dtype, device=dev)           # w0 | b0
    w0[0, :params[0].shape[0]] = params[0][:, 0].to(dtype)
    w0[1, :params[1].shape[0]] = params[1].to(dtype)
    wh = torch.zeros(nh, hp, hp, dtype=dtype, device=dev)     # Wt [in][out]
    bh = torch.zeros(nh, hp, dtype=dtype, device=dev)
    for layer in range(nh):
        w, b = params[2 * layer + 2], params[2 * layer + 3]
        wh[layer, :w.shape[1], :w.shape[0]] = w.t().to(dtype)
        bh[layer, :b.shape[0]] = b.to(dtype)
    wl = torch.zeros(hp + 1, dtype=dtype, device=dev)          # wl | bl
    wl[:params[-2].shape[1]] = params[-2][0].to(dtype)
    wl[hp:] = params[-1].to(dtype)
    return torch.cat([w0.reshape(-1), wh.reshape(-1), bh.reshape(-1), wl]), nh, hp


def unpack_grads(flat: Tensor, params: Sequence[Tensor]) -> List[Tensor]:
    """A gradient row of the packed layout → ``[dW0, db0, ...]`` shaped and typed like ``params``."""
    n = len(params) // 2
    nh, hp = n - 2, hidden_pad(params)
    if n == 1:
        out = [flat[:1].reshape(1, 1), flat[hp:hp + 1]]
        return [g.to(p.dtype).clone() for g, p in zip(out, params)]
    h0 = params[0].shape[0]
    out = [flat[:h0].reshape(h0, 1), flat[hp:hp + h0]]
    off_wh, off_bh = 2 * hp, 2 * hp + nh * hp * hp
    for layer in range(nh):
        w = params[2 * layer + 2]
        gw = flat[off_wh + layer * hp * hp:off_wh + (layer + 1) * hp * hp].reshape(hp, hp)
        out += [gw[:w.shape[1], :w.shape[0]].t(), flat[off_bh + layer * hp:off_bh + layer * hp + w.shape[0]]]
    off_wl = off_bh + nh * hp
    out += [flat[off_wl:off_wl + params[-2].shape[1]].reshape(1, -1), flat[off_wl + hp:off_wl + hp + 1]]
    return [g.to(p.dtype).clone() for g, p in zip(out, params)]  # own storage: outputs must not alias


# ------------------------------------------------------------------------------------------- launch geometry
def block_size(max_atoms: int, cd: torch.dtype = torch.float32) -> int:
    """Rows per tile (queries and keys): 16 up to 16 atoms, else 32 (a QM9 molecule, ≤ 29 atoms, is one tile).
    float64 always takes 16 (the exactness dtype: twice the registers per value, and the 32-row backward
    spills)."""
    return 16 if max_atoms <= 16 or cd == torch.float64 else 32


#: Whether launches under the interpreter take its faster geometry (False: the GPU's, e.g. to record the GPU
#: specialisations, as tools/triton_aot.py does).
INTERPRETER_GEOMETRY = True


def _interpreter_geometry() -> bool:
    """Whether this launch takes the interpreter's geometry."""
    return INTERPRETER_GEOMETRY and triton_interpreting()


def chunk_pairs(hp: int, cd: torch.dtype, pairs: int) -> int:
    """CP: pairs per MLP chunk, so that a [CP, HP] slab is CHUNK_ELEMS values (at least 16: tl.dot's M)."""
    budget = CHUNK_ELEMS[cd] * (INTERPRETER_CHUNK_SCALE if _interpreter_geometry() else 1)
    return max(16, min(pairs, budget // hp))


def unit_block(hp: int) -> int:
    """UB: MLP units per block."""
    return min(hp, INTERPRETER_UNIT_BLOCK if _interpreter_geometry() else UNIT_BLOCK)


#: Warps per program: 8 for 32-row tiles (4 pairs of a tile per thread), 4 for 16-row tiles.
WARPS = {16: 4, 32: 8}
#: ptxas register cap per thread: the full 255, stated, because without a cap ptxas may settle on 32 or 64
#: registers and spill; the AOT gate checks that every kernel fits.
MAX_REGISTERS = 255


def num_warps(block: int) -> int:
    return WARPS[block]


def compile_options(block: int) -> dict:
    """Launch options of every kernel (ignored by the interpreter)."""
    return {"num_warps": num_warps(block), "num_stages": 1, "maxnreg": MAX_REGISTERS}


def group_rows(block: int) -> int:
    """RG: rows of a tile whose pair geometry is computed together, one pair per thread (all of the tile
    under the interpreter)."""
    return block if _interpreter_geometry() else max(1, num_warps(block) * 32 // block)


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def persistent_programs(n_tiles: int, device: torch.device) -> int:
    """Programs of the persistent grid: each walks tiles pid, pid + G, ...; G bounds the scratch and the
    gradient partials whatever the batch (a fixed G per device keeps the reductions deterministic)."""
    if device.type == "cuda":
        cap = PROGRAMS_PER_SM * _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    else:
        cap = INTERPRETER_PROGRAMS
    return max(1, min(n_tiles, cap))


@dataclass(frozen=True)
class Tiles:
    """The launch geometry of a batch: BM = BN rows per tile, T tiles per molecule, n_tiles = B·T tiles in
    all, G persistent programs, CP pairs per MLP chunk, UB MLP units per block, RG rows per geometry group."""
    block: int
    per_molecule: int
    n_tiles: int
    programs: int
    chunk: int
    units: int
    group_rows: int


def tiles(seg: Tensor, max_atoms: int, hp: int, cd: torch.dtype) -> Tiles:
    block = block_size(max_atoms, cd)
    per = triton.cdiv(max_atoms, block)
    n = (seg.shape[0] - 1) * per
    return Tiles(block, per, n, persistent_programs(n, seg.device), chunk_pairs(hp, cd, block * block),
                 unit_block(hp), group_rows(block))


def small_head(d: int) -> Tuple[int, bool]:
    """(DP, SMALL): the head dim padded to a power of two (≥ 16 for tl.dot), and whether it is summed by
    broadcast instead."""
    dp = triton.next_power_of_2(max(d, 1))
    if dp <= SMALL_HEAD_DIM:
        return dp, True
    return max(16, dp), False


# ------------------------------------------------------------------------------------------------ checks
def check_segments(seg: Tensor, valid: Optional[Tensor], rows: int, max_atoms: int, device: torch.device) -> None:
    """The checks of the C++ ops (op_checks.h) on seg, valid and max_atoms, with their messages. The contents
    of seg are read only when it lives on the CPU (free there: the interpreter); on a GPU reading them would
    synchronise, so the public ops check cu_seqlens once per forward (``validate=True``) and the kernels clamp
    seg (memory-safe for any values) and write NaN for a molecule longer than max_atoms."""
    if not isinstance(seg, Tensor) or seg.dtype != torch.int64 or seg.dim() != 1 or seg.numel() < 1:
        raise ValueError(f"gtkernels: seg must be a 1-D int64 tensor of length B + 1 >= 1, got "
                         f"{getattr(seg, 'dtype', type(seg).__name__)} of shape {tuple(getattr(seg, 'shape', ()))}")
    if seg.device != device or not seg.is_contiguous():
        raise ValueError(f"gtkernels: seg must be a contiguous tensor on {device}, got {seg.device}")
    if valid is not None:
        if valid.dtype != torch.bool:
            raise ValueError(f"gtkernels: valid must be a bool tensor, got {valid.dtype}")
        if valid.dim() != 1 or valid.shape[0] != rows:
            raise ValueError(f"gtkernels: valid must have shape [{rows}], got {list(valid.shape)}")
        if valid.device != device or not valid.is_contiguous():
            raise ValueError(f"gtkernels: valid must be a contiguous tensor on {device}, got {valid.device}")
    if isinstance(max_atoms, bool) or not isinstance(max_atoms, int) or max_atoms < 0:
        raise ValueError(f"gtkernels: max_atoms must be >= 0, got {max_atoms!r}")
    if seg.device.type == "cpu":
        check_segment_values(seg.tolist(), rows, max_atoms)


def check_segment_values(s: List[int], rows: int, max_atoms: int) -> None:
    """seg[0] = 0, seg[-1] = rows, non-decreasing, every molecule at most max_atoms rows (host values)."""
    if s[0] != 0:
        raise ValueError(f"gtkernels: seg[0] must be 0, got {s[0]}")
    if s[-1] != rows:
        raise ValueError(f"gtkernels: seg[-1] must equal the number of rows {rows}, got {s[-1]}")
    for b in range(len(s) - 1):
        if s[b] > s[b + 1]:
            raise ValueError(f"gtkernels: seg must be non-decreasing, got seg[{b}] = {s[b]} > seg[{b + 1}] = "
                             f"{s[b + 1]}")
        if s[b + 1] - s[b] > max_atoms:
            raise ValueError(f"gtkernels: molecule {b} has {s[b + 1] - s[b]} rows, more than max_atoms = "
                             f"{max_atoms}")


def device_guard(device: torch.device):
    """Triton launches on the current CUDA device: make it the tensors' device for the launch."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def ladder(const: dict) -> List[dict]:
    """Launch configurations tried in this order at the first launch of a specialisation: the default, then
    unit blocks of 16, then the other warp count, then both. They change no scratch size and results only by
    rounding (the MLP's blocked sums split differently; a given specialisation on a given GPU always takes the
    same rung, so runs stay deterministic). The first that ptxas compiles without spilling is used (ptxas sits
    at the 255-register edge for the heaviest kernels, where a few bytes of spill come and go with small code
    changes); tools/triton_aot.py walks the same ladder offline for every specialisation the package launches
    and fails if no rung is spill-free."""
    rungs = [{}]
    if const["UB"] > 16:
        rungs.append({"UB": 16})
    other = 4 if const["num_warps"] == 8 else 8
    flip = {"num_warps": other, "RG": max(1, other * 32 // const["BN"])}
    rungs.append(flip)
    if const["UB"] > 16:
        rungs.append({"UB": 16, **flip})
    return rungs


_CHOSEN: dict = {}


def _describe(value) -> str:
    """What Triton's runtime specialises a launch on, for one argument."""
    if isinstance(value, Tensor):
        return f"*{value.dtype}:{value.data_ptr() % 16 == 0}"
    if isinstance(value, bool):
        return f"b:{value}"
    if isinstance(value, int):
        return f"i:{value == 1}:{value % 16 == 0}:{-2 ** 31 <= value < 2 ** 31}"
    if isinstance(value, float):
        return "f"
    return repr(value)


def _spill_free(kernel, grid, args, kwargs) -> dict:
    """The first rung of :func:`ladder` that compiles without spills for this specialisation (compiled once,
    then cached by Triton; the choice is kept per specialisation)."""
    key = (kernel.fn.__name__, tuple(_describe(a) for a in args),
           tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
    if key not in _CHOSEN:
        _CHOSEN[key] = {}
        for rung in ladder(kwargs):
            compiled = kernel.warmup(*args, grid=grid, **{**kwargs, **rung})
            compiled._init_handles()
            if not getattr(compiled, "n_spills", 0):
                _CHOSEN[key] = rung
                break
        else:
            warnings.warn(f"gtkernels: every launch configuration of {kernel.fn.__name__} spills registers for this "
                          f"specialisation ({kwargs}); running the default (correct, slower)")
    return _CHOSEN[key]


def launch(kernel, grid, device: torch.device, *args, **kwargs) -> None:
    """Every Triton launch of the package goes through here: inside the device guard, and on a GPU with the
    first spill-free configuration of :func:`ladder`."""
    with device_guard(device):
        if device.type == "cuda":
            kwargs = {**kwargs, **_spill_free(kernel, grid, args, kwargs)}
        kernel[grid](*args, **kwargs)

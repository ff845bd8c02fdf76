"""The CUDA kernels on a seg nobody checked, as on a GPU (csrc/cuda/block_programs.h, tile_of).

On CUDA tensors the C++ glue never reads seg's values (that would be a host synchronisation per call): the
kernels clamp seg into [0, R] and write NaN into every output of a molecule with more rows than max_atoms.
The host emulation checks seg's values, except under its test hook GTKERNELS_CUDA_EMULATE_UNCHECKED=1, which
also frames every output buffer of a launch with sentinel bytes and raises on an out-of-bounds write. Here the
inputs are views into larger buffers whose guard rows hold NaN (True for valid): a read outside rows [0, R)
would make the outputs non-finite, and the guard rows must stay untouched. Last, the empty tiles of a grid
sized by a loose max_atoms change nothing.
"""
import pytest
import torch

import gtkernels
from gtkernels.ops.layout import padded_segments
from helpers import attention_inputs, mlp_params, random_molecules

pytestmark = pytest.mark.skipif(not gtkernels.extension_available(), reason="gtkernels._C not built")

GUARD = 40  # rows of sentinel before and after every input
R_ROWS = 12


@pytest.fixture
def unchecked(monkeypatch):
    """The emulation's test hook, with one intra-op thread (programs of overlapping bad molecules then run one
    after another: deterministic)."""
    monkeypatch.setenv("GTKERNELS_CUDA_EMULATE_UNCHECKED", "1")
    monkeypatch.setenv("GTKERNELS_CUDA_EMULATE", "1")   # backend="cuda" on CPU tensors
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _emulated(name):
    return getattr(torch.ops.gtkernels_C, "cuda_emulated_" + name)


class Carved:
    """``x`` [R, ...] copied into rows GUARD .. GUARD + R of a buffer of R + 2·GUARD rows filled with ``fill``."""

    def __init__(self, x, fill):
        self.buffer = torch.full((x.shape[0] + 2 * GUARD,) + tuple(x.shape[1:]), fill, dtype=x.dtype)
        self.buffer[GUARD:GUARD + x.shape[0]] = x
        self.view = self.buffer[GUARD:GUARD + x.shape[0]]
        self.fill = fill
        assert self.view.is_contiguous() and self.view.storage_offset() > 0

    def guards_intact(self):
        g = torch.cat([self.buffer[:GUARD], self.buffer[-GUARD:]])
        return bool((g.isnan() if self.fill != self.fill else g == self.fill).all())


def _inputs(dtype=torch.float64, with_valid=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    R, H, D = R_ROWS, 2, 3
    pos = torch.randn(R, 3, generator=g, dtype=torch.float64) * 2.0
    q, k, v, dout = (torch.randn(R, H, D, generator=g, dtype=torch.float64).to(dtype) for _ in range(4))
    valid = torch.ones(R, dtype=torch.bool)
    valid[[2, 7]] = False
    nan = float("nan")
    carved = {name: Carved(t, nan) for name, t in (("q", q), ("k", k), ("v", v), ("pos", pos), ("dout", dout))}
    if with_valid:
        carved["valid"] = Carved(valid, True)
    return carved


BAD_SEGS = [
    pytest.param([0, 5, 3, R_ROWS], id="decreasing"),
    pytest.param([-7, 4, R_ROWS], id="negative"),
    pytest.param([0, 6, R_ROWS + 40], id="past_the_end"),
    pytest.param([0, 2 ** 40, R_ROWS], id="huge"),
    pytest.param([3, 8], id="not_0_to_R"),
    pytest.param([0, R_ROWS, R_ROWS, -5], id="ends_negative"),
    pytest.param([-(2 ** 62), 2 ** 62], id="extremes"),
    pytest.param([R_ROWS, 0, R_ROWS, 0, 5], id="zigzag"),
]


@pytest.mark.parametrize("with_valid", [True, False], ids=["valid", "no_valid"])
@pytest.mark.parametrize("seg", BAD_SEGS)
def test_bad_seg_stays_in_bounds(seg, with_valid, unchecked):
    """No seg value makes a program read or write outside rows [0, R): outputs finite (max_atoms = R, so no
    molecule is poisoned once seg is clamped), guards intact, no out-of-bounds write reported."""
    c = _inputs(with_valid=with_valid)
    seg_t = torch.tensor(seg, dtype=torch.int64)
    valid = c["valid"].view if with_valid else None
    psi = [p.detach() for p in mlp_params([6, 6], seed=1)]
    phi = [p.detach() for p in mlp_params([5], seed=2)]
    args = (c["q"].view, c["k"].view, c["v"].view, c["pos"].view, psi, seg_t, valid, R_ROWS)
    out, lse = _emulated("attention_fwd")(*args, 0.5, "ieee")
    assert torch.isfinite(out).all() and not torch.isnan(lse).any()
    out_c, lse_c = Carved(out, float("nan")), Carved(lse, float("nan"))
    grads = _emulated("attention_bwd")(c["dout"].view, *args, 0.5, "ieee", out_c.view, lse_c.view)
    dq, dk, dv, dpos, dpsi = grads
    for t in (dq, dk, dv, dpos, *dpsi):
        assert torch.isfinite(t).all()
    s = _emulated("encoding_fwd")(c["pos"].view, phi, seg_t, valid, R_ROWS, "ieee")
    assert torch.isfinite(s).all()
    ds = Carved(torch.linspace(-1, 1, R_ROWS, dtype=torch.float64), float("nan"))
    dpos_e, dphi = _emulated("encoding_bwd")(ds.view, c["pos"].view, phi, seg_t, valid, R_ROWS, "ieee")
    for t in (dpos_e, *dphi):
        assert torch.isfinite(t).all()
    for name, carved in list(c.items()) + [("out", out_c), ("lse", lse_c), ("ds", ds)]:
        assert carved.guards_intact(), name


@pytest.mark.parametrize("seg", [[0, 5, 3, R_ROWS], [-3, R_ROWS + 9], [0, 2 ** 40, R_ROWS]])
def test_bad_seg_with_small_max_atoms_stays_in_bounds(seg, unchecked):
    """The same with max_atoms below the clamped molecules' sizes: some outputs are NaN (poisoned), and still
    nothing is written out of bounds (the emulation's frames) or read from the guards."""
    c = _inputs()
    seg_t = torch.tensor(seg, dtype=torch.int64)
    psi = [p.detach() for p in mlp_params([6, 6], seed=1)]
    for max_atoms in (0, 3):
        args = (c["q"].view, c["k"].view, c["v"].view, c["pos"].view, psi, seg_t, c["valid"].view, max_atoms)
        out, lse = _emulated("attention_fwd")(*args, 0.5, "ieee")
        _emulated("attention_bwd")(c["dout"].view, *args, 0.5, "ieee", out, lse)
        _emulated("encoding_fwd")(c["pos"].view, psi, seg_t, c["valid"].view, max_atoms, "ieee")
        _emulated("encoding_bwd")(c["dout"].view[:, 0, 0].contiguous(), c["pos"].view, psi, seg_t, c["valid"].view,
                                  max_atoms, "ieee")
    for name, carved in c.items():
        assert carved.guards_intact(), name


# ------------------------------------------------------------------------------------ undersized max_atoms → NaN
SIZES = [5, 40, 3]   # molecule 1 (rows 5..44) is the one larger than max_atoms


def _packed_rows(dtype=torch.float64):
    mols = random_molecules(SIZES, seed=21)
    q, k, v, pos, _, cu = attention_inputs(mols, 2, 3, layout="packed", dtype=dtype)
    seg = cu.to(torch.int64)
    return [t.detach() for t in (q, k, v, pos)], seg


@pytest.mark.parametrize("max_atoms", [10, 35], ids=["grid_too_small", "grid_covers_but_bound_exceeded"])
def test_undersized_max_atoms_poisons_the_molecule(max_atoms, unchecked):
    """A molecule with more rows than max_atoms gets NaN in every output row (forward: out and lse; backward: dq,
    dk, dv, dpos, and the ψ/φ gradients, which sum over it), never finite numbers; the other molecules' rows are
    exactly those of a correct max_atoms."""
    (q, k, v, pos), seg = _packed_rows()
    bad = torch.zeros(q.shape[0], dtype=torch.bool)
    bad[seg[1]:seg[2]] = True
    psi = [p.detach() for p in mlp_params([50, 50, 50], seed=3)]
    phi = [p.detach() for p in mlp_params([50], seed=4)]
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(5), dtype=q.dtype)
    ds = torch.randn(q.shape[0], generator=torch.Generator().manual_seed(6), dtype=q.dtype)

    def run(n):
        out, lse = _emulated("attention_fwd")(q, k, v, pos, psi, seg, None, n, 0.5, "ieee")
        grads = _emulated("attention_bwd")(dout, q, k, v, pos, psi, seg, None, n, 0.5, "ieee", out, lse)
        s = _emulated("encoding_fwd")(pos, phi, seg, None, n, "ieee")
        enc_grads = _emulated("encoding_bwd")(ds, pos, phi, seg, None, n, "ieee")
        return [out, lse, *grads[:4], s, enc_grads[0]], list(grads[4]) + list(enc_grads[1])

    rows_bad, params_bad = run(max_atoms)
    rows_good, params_good = run(max(SIZES))
    for bad_t, good_t in zip(rows_bad, rows_good):
        assert torch.isnan(bad_t[bad]).all()
        assert torch.isfinite(good_t).all() and torch.equal(bad_t[~bad], good_t[~bad])
    for bad_t, good_t in zip(params_bad, params_good):
        assert torch.isnan(bad_t).all() and torch.isfinite(good_t).all()


def test_undersized_max_atoms_through_the_public_op(unchecked):
    """End to end (packed layout, max_seqlen too small, validate=False): NaN rows for the large molecule."""
    (q, k, v, pos), seg = _packed_rows()
    cu = seg.to(torch.int32)
    psi = [p.detach() for p in mlp_params([50, 50, 50], seed=3)]
    out = gtkernels.geometric_attention(q, k, v, pos, psi, cu_seqlens=cu, max_seqlen=10, backend="cuda",
                                        validate=False)
    assert torch.isnan(out[seg[1]:seg[2]]).all()
    assert torch.isfinite(out[:seg[1]]).all() and torch.isfinite(out[seg[2]:]).all()


def test_checked_emulation_rejects_what_the_gpu_poisons(monkeypatch):
    """Without the hook the emulation checks seg's values as the CPU backend does."""
    monkeypatch.delenv("GTKERNELS_CUDA_EMULATE_UNCHECKED", raising=False)
    (q, k, v, pos), seg = _packed_rows()
    psi = [p.detach() for p in mlp_params([6], seed=3)]
    with pytest.raises(RuntimeError, match="more than max_atoms = 10"):
        _emulated("attention_fwd")(q, k, v, pos, psi, seg, None, 10, 0.5, "ieee")
    with pytest.raises(RuntimeError, match="non-decreasing"):
        _emulated("encoding_fwd")(pos, psi, torch.tensor([0, 30, 20, q.shape[0]]), None, 100, "ieee")
    seg_p, valid = padded_segments(2, 4, None, torch.device("cpu"))
    with pytest.raises(RuntimeError, match="seg\\[-1\\] must equal"):
        _emulated("encoding_fwd")(pos[:8].contiguous(), psi, seg_p[:-1].contiguous(), None, 4, "ieee")


@pytest.mark.parametrize("valid_rows", [False, True], ids=["packed", "with_padding"])
def test_empty_tiles_change_nothing(valid_rows):
    """max_atoms far above the largest molecule: most programs get an empty tile (r0 = r1) or a tile of padding
    rows only, and return; every output equals that of the tight bound, the ψ/φ gradients (a sum over more zero
    partial rows) to rounding."""
    (q, k, v, pos), seg = _packed_rows()
    valid = None
    if valid_rows:
        valid = torch.ones(q.shape[0], dtype=torch.bool)
        valid[seg[1]:seg[1] + 33] = False   # the large molecule's first tile and more are padding
    psi = [p.detach() for p in mlp_params([50, 50, 50], seed=3)]
    phi = [p.detach() for p in mlp_params([50], seed=4)]
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(5), dtype=q.dtype)
    ds = torch.randn(q.shape[0], generator=torch.Generator().manual_seed(6), dtype=q.dtype)

    def run(n):
        out, lse = _emulated("attention_fwd")(q, k, v, pos, psi, seg, valid, n, 0.5, "ieee")
        grads = _emulated("attention_bwd")(dout, q, k, v, pos, psi, seg, valid, n, 0.5, "ieee", out, lse)
        s = _emulated("encoding_fwd")(pos, phi, seg, valid, n, "ieee")
        enc_grads = _emulated("encoding_bwd")(ds, pos, phi, seg, valid, n, "ieee")
        return [out, lse, *grads[:4], s, enc_grads[0]], list(grads[4]) + list(enc_grads[1])

    rows_tight, params_tight = run(max(SIZES))
    rows_loose, params_loose = run(10 * max(SIZES))
    for a, b in zip(rows_loose, rows_tight):
        assert torch.equal(a, b)
    for a, b in zip(params_loose, params_tight):
        assert torch.allclose(a, b, rtol=1e-13, atol=1e-15)

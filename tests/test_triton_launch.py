"""The Triton launchers' safety on a GPU, checked on CPU: every launch inside a device guard for the tensors'
device, seg / valid / max_atoms validated as the C++ ops validate them, the kernels memory-safe for a bad seg
whose checks were skipped, and a molecule longer than max_atoms NaN, never a silently partial sum."""
import ast
import contextlib
import os

import pytest
import torch

import gtkernels
from helpers import attention_inputs, mlp_params, random_molecules

pytestmark = pytest.mark.skipif(not gtkernels._backends.triton_available()
                                or os.environ.get("TRITON_INTERPRET") != "1" or torch.cuda.is_available(),
                                reason="runs the Triton kernels under the interpreter (CPU only)")

if not pytestmark.args[0]:
    from gtkernels.triton import attention, encoding, launch

KERNELS = ("_attention_fwd_kernel", "_attention_bwd_kernel", "_encoding_fwd_kernel", "_encoding_bwd_kernel")


def _rows(sizes, heads=2, d=2, seed=0):
    mols = random_molecules(sizes, seed=seed)
    q, k, v, pos, _, cu = attention_inputs(mols, heads, d, layout="packed")
    seg = cu.to(torch.int64)
    return [t.detach() for t in (q, k, v)], pos.detach().double(), seg, max(sizes)


def test_every_launch_is_inside_a_device_guard_for_the_tensors_device(monkeypatch):
    active, launches = [], []

    @contextlib.contextmanager
    def guard(device):
        active.append(device)
        try:
            yield
        finally:
            active.pop()

    monkeypatch.setattr(launch, "device_guard", guard)
    for name in KERNELS:
        module = attention if name.startswith("_attention") else encoding
        kern = getattr(module, name)
        real = kern.run

        def run(*args, _real=real, _name=name, **kwargs):
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            launches.append((_name, list(active), {t.device for t in tensors}))
            return _real(*args, **kwargs)

        monkeypatch.setattr(kern, "run", run)
    (q, k, v), pos, seg, n = _rows([5, 3])
    psi = [p.detach() for p in mlp_params([8, 8])]
    out, lse = attention.attention_fwd(q, k, v, pos, psi, seg, None, n, 0.5, "ieee")
    attention.attention_bwd(torch.ones_like(out), q, k, v, pos, psi, seg, None, n, 0.5, "ieee", out, lse)
    s = encoding.encoding_fwd(pos, psi, seg, None, n, "ieee")
    encoding.encoding_bwd(torch.ones_like(s), pos, psi, seg, None, n, "ieee")
    assert sorted(name for name, _, _ in launches) == sorted(KERNELS)
    for name, guards, devices in launches:
        assert len(guards) == 1 and devices == {guards[0]}, (name, guards, devices)


def test_device_guard_selects_the_tensors_cuda_device():
    g = launch.device_guard(torch.device("cuda", 1))
    assert isinstance(g, torch.cuda.device) and g.idx == 1
    assert isinstance(launch.device_guard(torch.device("cpu")), contextlib.nullcontext)


def test_kernels_are_only_launched_through_launch():
    """No ``kernel[grid](...)`` outside launch.launch: a new launch site cannot forget the guard."""
    folder = os.path.dirname(launch.__file__)
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".py"):
            continue
        tree = ast.parse(open(os.path.join(folder, name)).read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript):
                fn = next((f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)
                           and f.lineno <= node.lineno <= f.end_lineno), None)
                assert name == "launch.py" and fn is not None and fn.name == "launch", \
                    f"{name}:{node.lineno}: a kernel launched outside launch.launch()"


@pytest.mark.parametrize("mutate,match", [
    (lambda seg: seg.to(torch.int32), "seg must be a 1-D int64 tensor"),
    (lambda seg: seg[None], "seg must be a 1-D int64 tensor"),
    (lambda seg: seg + 1, r"seg\[0\] must be 0, got 1"),
    (lambda seg: torch.cat([seg[:-1], seg[-1:] + 2]), "seg\\[-1\\] must equal the number of rows 8, got 10"),
    (lambda seg: torch.tensor([0, 6, 5, 8]), r"seg must be non-decreasing, got seg\[1\] = 6 > seg\[2\] = 5"),
])
def test_seg_is_validated_as_the_cpp_ops_do(mutate, match):
    (q, k, v), pos, seg, n = _rows([5, 3])
    psi = [p.detach() for p in mlp_params([8])]
    with pytest.raises(ValueError, match=match):
        attention.attention_fwd(q, k, v, pos, psi, mutate(seg), None, 8, 0.5, "ieee")
    with pytest.raises(ValueError, match=match):
        encoding.encoding_fwd(pos, psi, mutate(seg), None, 8, "ieee")


def test_max_atoms_and_valid_are_validated():
    (q, k, v), pos, seg, n = _rows([5, 3])
    psi = [p.detach() for p in mlp_params([8])]
    with pytest.raises(ValueError, match="molecule 0 has 5 rows, more than max_atoms = 4"):
        attention.attention_fwd(q, k, v, pos, psi, seg, None, 4, 0.5, "ieee")
    with pytest.raises(ValueError, match=r"valid must have shape \[8\]"):
        attention.attention_fwd(q, k, v, pos, psi, seg, torch.ones(7, dtype=torch.bool), 5, 0.5, "ieee")
    with pytest.raises(ValueError, match="valid must be a bool tensor"):
        encoding.encoding_fwd(pos, psi, seg, torch.ones(8), 5, "ieee")
    with pytest.raises(ValueError, match="precision must be 'ieee' or 'tf32'"):
        attention.attention_fwd(q, k, v, pos, psi, seg, None, 5, 0.5, "fast")


def _guarded(t, guard=64):
    """``t`` as a view inside a buffer with ``guard`` NaN-filled elements on each side (per-row layout kept)."""
    flat = torch.full((t.numel() + 2 * guard,), float("nan"), dtype=t.dtype)
    flat[guard:guard + t.numel()] = t.reshape(-1)
    return flat, flat[guard:guard + t.numel()].view(t.shape)


@pytest.mark.parametrize("bad", [[0, 9, 8], [-5, 3, 8], [0, 3, 10 ** 6], [0, 8, 3]])
def test_unchecked_bad_seg_stays_in_bounds(monkeypatch, bad):
    """With the host checks skipped (as on a GPU), a bad seg is clamped into [0, R]: the kernels neither read
    outside the inputs (NaN guards would leak into the outputs) nor write outside the outputs."""
    monkeypatch.setattr(launch, "check_segment_values", lambda *a: None)
    (q, k, v), pos, _, _ = _rows([5, 3])
    guards = [_guarded(t) for t in (q, k, v, pos)]
    (qb, q), (kb, k), (vb, v), (pb, pos) = guards
    seg = torch.tensor(bad, dtype=torch.int64)
    psi = [p.detach() for p in mlp_params([8])]
    outbuf, out = _guarded(torch.zeros_like(q))
    real_zeros_like = torch.zeros_like

    def zeros_like(t, *a, **kw):   # the launcher's output buffer, framed by NaN guards
        return out if t is q else real_zeros_like(t, *a, **kw)

    monkeypatch.setattr(torch, "zeros_like", zeros_like)
    o, lse = attention.attention_fwd(q, k, v, pos, psi, seg, None, 8, 0.5, "ieee")
    monkeypatch.undo()
    assert o.data_ptr() == out.data_ptr()
    assert torch.isnan(outbuf[:64]).all() and torch.isnan(outbuf[-64:]).all(), "write outside the output"
    for buf in (qb, kb, vb, pb):
        assert torch.isnan(buf[:64]).all() and torch.isnan(buf[-64:]).all()
    assert torch.isfinite(o).all(), "an input guard (NaN) was read"   # every row lies in a clamped molecule


def test_molecule_longer_than_max_atoms_is_nan_not_partial(monkeypatch):
    monkeypatch.setattr(launch, "check_segment_values", lambda *a: None)
    (q, k, v), pos, seg, _ = _rows([40, 3], heads=2, d=3)
    psi = [p.detach() for p in mlp_params([8])]
    out, lse = attention.attention_fwd(q, k, v, pos, psi, seg, None, 32, 0.5, "ieee")
    assert torch.isnan(out[:32]).all() and torch.isnan(lse[:32]).all()      # the long molecule's covered rows
    assert torch.isfinite(out[40:]).all() and torch.isfinite(lse[40:]).all()   # the other molecule is intact
    dq, dk, dv, dpos, dpsi = attention.attention_bwd(torch.ones_like(out), q, k, v, pos, psi, seg, None, 32, 0.5,
                                                     "ieee", out.nan_to_num(), lse.nan_to_num())
    assert torch.isnan(dpos[:32]).all() and torch.isnan(dq[:32]).all() and torch.isfinite(dpos[40:]).all()
    s = encoding.encoding_fwd(pos, psi, seg, None, 32, "ieee")
    assert torch.isnan(s[:32]).all() and torch.isfinite(s[40:]).all()


def test_gpu_launch_takes_the_first_spill_free_rung(monkeypatch):
    """On a GPU, launch() compiles the ladder's rungs in order until ptxas reports no spill, launches with that
    one, and remembers the choice for the specialisation (CPU check with a stand-in kernel)."""
    compiled, launched = [], []

    class Compiled:
        def __init__(self, spills):
            self.n_spills = spills

        def _init_handles(self):
            pass

    class FakeKernel:
        class fn:
            __name__ = "fake_kernel"

        def warmup(self, *args, grid, **kwargs):
            compiled.append(dict(kwargs))
            return Compiled(8 if kwargs["UB"] == 32 else 0)    # the default spills, unit blocks of 16 do not

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launched.append(dict(kwargs))

    monkeypatch.setattr(launch, "device_guard", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(launch, "_CHOSEN", {})
    const = dict(BM=32, BN=32, UB=32, RG=8, num_warps=8, num_stages=1, maxnreg=255)
    args = (torch.zeros(4), 7)
    launch.launch(FakeKernel(), (3,), torch.device("cuda"), *args, **const)
    assert [c["UB"] for c in compiled] == [32, 16] and launched[-1]["UB"] == 16
    launch.launch(FakeKernel(), (3,), torch.device("cuda"), *args, **const)
    assert len(compiled) == 2 and launched[-1]["UB"] == 16          # the choice is kept
    launch.launch(FakeKernel(), (3,), torch.device("cpu"), *args, **const)
    assert len(compiled) == 2 and launched[-1]["UB"] == 32          # no ladder on CPU (the interpreter)

"""No host synchronisation in a training step on the GPU paths: while a paper-shaped model runs forward and
backward with ``validate=False`` on the triton (interpreter) and cuda (host emulation) backends, every
Tensor method that copies device data to the host raises when the package calls it.

What this covers: the Python side of the package (ops, geometry, modules, model, Triton launchers). The C++
glue is covered by tests/test_no_host_sync.py (a static check of its sources). Syncs inside torch operators
themselves (a nonzero, a boolean-mask index) are not Python calls: the package's per-layer path uses none, and
tools/gpu_session.sh runs the same step under ``torch.cuda.set_sync_debug_mode("error")`` on a GPU.
"""
import contextlib
import os
import sys

import pytest
import torch

import gtkernels
from gtkernels.models import GeometricTransformer
from gtkernels.data import pack, pad
from helpers import random_molecules

PACKAGE_DIRS = tuple(os.path.dirname(m.__file__) + os.sep for m in (gtkernels, __import__("gtkernels_py")))
#: Tensor methods that read device data on the host (each one a synchronisation on a GPU).
SYNCING = ("item", "__int__", "__bool__", "__float__", "__index__", "tolist", "cpu", "numpy")
#: Package functions allowed to read tensor values on the host: they do so only for CPU tensors (the
#: interpreter's, where it is free), a branch a GPU launch never takes.
CPU_ONLY_READS = ("check_segments",)


class HostSync(AssertionError):
    pass


@contextlib.contextmanager
def host_syncs_forbidden():
    """Within the block, the SYNCING methods raise HostSync when package code calls them; yields the calls."""
    calls = []

    def make(name, real):
        def guarded(self, *args, **kwargs):
            frame = sys._getframe(1)
            where = frame.f_code.co_filename
            if where.startswith(PACKAGE_DIRS) and frame.f_code.co_name not in CPU_ONLY_READS:
                calls.append(f"Tensor.{name} from {os.path.relpath(where)}:{frame.f_lineno} ({frame.f_code.co_name})")
                raise HostSync(calls[-1])
            return real(self, *args, **kwargs)
        return guarded

    with pytest.MonkeyPatch.context() as mp:
        for name in SYNCING:
            mp.setattr(torch.Tensor, name, make(name, getattr(torch.Tensor, name)))
        yield calls


def _backend(name, monkeypatch):
    if name == "triton":
        if not gtkernels._backends.triton_available() or os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("the Triton interpreter (TRITON_INTERPRET=1, no GPU) is needed")
    else:
        if not gtkernels.extension_available():
            pytest.skip("gtkernels._C not built")
        monkeypatch.setenv("GTKERNELS_CUDA_EMULATE", "1")


@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_paper_shaped_training_step_makes_no_host_sync(backend, layout, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("CPU check of the GPU paths (the GPU run uses torch.cuda.set_sync_debug_mode)")
    _backend(backend, monkeypatch)
    torch.manual_seed(0)
    # the paper's layer (d 512, 256 heads x d_k 2, psi 50 with 2 hidden layers); one layer keeps the
    # interpreter's run short, and every layer runs the same code
    model = GeometricTransformer("paper", num_layers=1, backend=backend, validate=False)
    assert model.config["d_model"] == 512 and model.config["num_heads"] == 256
    mols = random_molecules([5, 3], seed=1)
    if layout == "padded":
        z, pos, mask = pad(mols, torch.float64)
        inputs, kw = (z.long(), pos), {}
    else:
        z, pos, cu = pack(mols)
        inputs, kw = (z.long(), pos.double()), dict(cu_seqlens=cu, max_seqlen=5)
    with host_syncs_forbidden() as calls:
        energy = model(*inputs, **kw)
        grads = torch.autograd.grad(energy.sum(), [p for p in model.parameters() if p.requires_grad])
    assert not calls, calls
    assert energy.shape == (2,) and torch.isfinite(energy).all()
    assert all(torch.isfinite(g).all() for g in grads)


def test_the_guard_catches_a_sync_in_package_code():
    """The check can fail: a host read from package code raises (here: max_seqlen read from cu_seqlens)."""
    from gtkernels.ops import geometry
    cu = torch.tensor([0, 3, 5], dtype=torch.int32)
    with host_syncs_forbidden() as calls, pytest.raises(HostSync, match="from gtkernels/ops/geometry.py"):
        geometry.prepare_geometry(torch.zeros(5, 3), cu_seqlens=cu, validate=False)
    assert len(calls) == 1


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_training_step_under_sync_debug_mode(backend):
    """On a GPU: the same step with torch's own detector of synchronising operations set to raise (it also
    sees syncs inside torch operators and pageable host-to-device copies)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU (tools/gpu_session.sh runs it)")
    if backend == "cuda" and not gtkernels._backends.cuda_kernels_built():
        pytest.skip("gtkernels._C was built without the CUDA kernels")
    torch.manual_seed(0)
    model = GeometricTransformer("paper", num_layers=2, backend=backend, validate=False).cuda()
    z, pos, _ = pad(random_molecules([29, 12, 5, 18], seed=2), torch.float64)
    z, pos = z.long().cuda(), pos.cuda()
    model(z, pos).sum().backward()          # first call: compiles, allocates
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        energy = model(z, pos)
        energy.sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(energy).all()

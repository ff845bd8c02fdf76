"""gtkernels.models.GeometricTransformer: parity with gtkernels_py's model, layouts, forces, presets.

GPU backends ("cuda", "triton") run the model on CUDA tensors when a GPU is visible. Without one, "cuda" runs its
kernels' host emulation on CPU tensors (GTKERNELS_CUDA_EMULATE=1, set below) and "triton" the Triton interpreter
(TRITON_INTERPRET=1, set by conftest.py before triton is imported). The reference model it is compared with
always runs on CPU.
"""

import pytest
import torch

import gtkernels_py
from gtkernels.data import batch_vector, pack, pad
from gtkernels.data.units import atomref
from gtkernels.models import PRESETS, GeometricTransformer
from conftest import requires_ase, requires_extension
from helpers import backend_device, backend_skip_reason, qm9_molecules, rel_err

GPU_BACKENDS = ("cuda", "triton")
CUDA = torch.cuda.is_available()
BACKENDS = ["reference", pytest.param("cpu", marks=requires_extension)] + [
    pytest.param(b, marks=pytest.mark.skipif(backend_skip_reason(b) is not None, reason=str(backend_skip_reason(b))))
    for b in GPU_BACKENDS]


@pytest.fixture(autouse=True)
def _emulate_cuda_kernels(monkeypatch):
    if not CUDA:
        monkeypatch.setenv("GTKERNELS_CUDA_EMULATE", "1")


def _to(device, *tensors):
    return [None if t is None else t.to(device) for t in tensors]


def _pair(backend, dtype=torch.float64, **kw):
    """(model of ``backend`` on its device, gtkernels_py's model on CPU), the same weights."""
    torch.manual_seed(0)
    ref_atomref = torch.as_tensor(atomref("U0")) / 1000
    m = GeometricTransformer("tiny", backend=backend, mean=-5.0, std=2.0, atomref=ref_atomref, **kw).to(dtype)
    r = gtkernels_py.GeometricTransformer(**PRESETS["tiny"]).to(dtype)
    r.load_state_dict(m.state_dict())
    return m.to(backend_device(backend)), r


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_reference_model(backend):
    m, r = _pair(backend)
    dev = backend_device(backend)
    mols = qm9_molecules(6)
    z, pos, mask = pad(mols, torch.float64)
    want = r(z, pos, mask)
    out = m(*_to(dev, z, pos, mask))
    assert out.device.type == dev.type
    assert rel_err(out.cpu(), want) < 1e-10
    zp, pp, cu = _to(dev, *pack(mols, torch.float64))
    assert rel_err(m(zp, pp, cu_seqlens=cu).cpu(), want) < 1e-10
    assert rel_err(m.forward_batch(zp, pp, batch_vector(cu)).cpu(), want) < 1e-10
    # the state-dict names are the reference's, both ways
    assert set(m.state_dict()) == set(r.state_dict())


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_and_position_cast(backend):
    m, r = _pair(backend, torch.float32)
    z, pos, mask = pad(qm9_molecules(4), torch.float64)
    # float64 positions pass through to the ops (distances in float64)
    out = m(*_to(backend_device(backend), z, pos, mask))
    # float32 network, float64 read-out (·std + mean + atomref and the molecule sum)
    assert out.dtype == torch.float64 and out.device.type == backend_device(backend).type
    assert rel_err(out.cpu(), r(z, pos.float(), mask)) < 1e-5


def test_without_atomref():
    m, _ = _pair("reference")
    z, pos, mask = pad(qm9_molecules(3), torch.float64)
    diff = m(z, pos, mask) - m(z, pos, mask, include_atomref=False)
    assert torch.allclose(diff, (m.atomref[z] * mask).sum(-1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_forces_are_minus_gradient(backend):
    m, r = _pair(backend, target="U0")
    m.eval()
    z, pos, mask = pad(qm9_molecules(2), torch.float64)
    e, f = m.forces(*_to(backend_device(backend), z, pos, mask))
    assert f.device.type == backend_device(backend).type
    e, f = e.detach().cpu(), f.cpu()
    p = pos.clone().requires_grad_()
    e_ref = r(z, p, mask)
    (g,) = torch.autograd.grad(e_ref.sum(), p)
    assert rel_err(e, e_ref) < 1e-10
    assert rel_err(f, -g) < 1e-8 and f.shape == pos.shape
    assert float(f[~mask].abs().max()) == 0.0
    m.target = "gap"
    with pytest.raises(ValueError, match="energy"):
        m.forces(*_to(backend_device(backend), z, pos, mask))


def test_validation_once_at_model_level():
    m = GeometricTransformer("tiny", backend="reference").double()
    assert all(not layer.attn.validate for layer in m.layers) and not m.encoding.validate
    z, pos, mask = pad(qm9_molecules(2), torch.float64)
    pos[0, 1] = pos[0, 0]
    with pytest.raises(ValueError):
        m(z, pos, mask)


def test_presets_and_errors():
    assert PRESETS["paper"] == dict(num_layers=10, d_model=512, num_heads=256)
    with pytest.raises(ValueError, match="preset"):
        GeometricTransformer("huge")
    with pytest.raises(ValueError):
        GeometricTransformer("tiny", backend="bogus")
    m = GeometricTransformer("tiny", num_layers=1)
    assert len(m.layers) == 1 and m.config["d_model"] == 64


@requires_ase
def test_ase_calculator():
    from ase import Atoms
    from gtkernels.ase_calculator import GTCalculator
    m, _ = _pair("reference", target="U0")
    atoms = Atoms("CH4", positions=[[0, 0, 0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63], [-0.63, 0.63, -0.63],
                                    [0.63, -0.63, -0.63]])
    atoms.calc = GTCalculator(m)
    e, f = atoms.get_potential_energy(), atoms.get_forces()
    z, pos = torch.tensor([[6, 1, 1, 1, 1]]), torch.tensor(atoms.positions)[None]
    e_ref, f_ref = m.eval().forces(z, pos)
    assert e == pytest.approx(float(e_ref[0].detach()) / 1000, rel=1e-12)
    assert abs(f - f_ref[0].numpy() / 1000).max() < 1e-12
    # forces are −dE/dx: central finite difference on one coordinate (eV, eV/Å)
    h = 1e-5
    atoms.positions[1, 0] += h
    ep = atoms.get_potential_energy()
    atoms.positions[1, 0] -= 2 * h
    em = atoms.get_potential_energy()
    assert -(ep - em) / (2 * h) == pytest.approx(f[1, 0], rel=1e-5, abs=1e-8)
    with pytest.raises(ValueError, match="not an energy"):
        GTCalculator(m, target="gap")


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_bf16(backend):
    """bf16 autocast (the trainer's --amp, on GPU): the fused op runs in float32, the read-out too."""
    m, r = _pair(backend, torch.float32)
    z, pos, mask = pad(qm9_molecules(4), torch.float32)
    dev = backend_device(backend)
    with torch.autocast(dev.type, dtype=torch.bfloat16):
        out = m(*_to(dev, z, pos, mask), include_atomref=False)
    assert out.dtype == torch.float64 and out.device.type == dev.type   # the read-out sums in float64
    ref = r(z, pos, mask) - (r.atomref[z] * mask).sum(-1)
    assert rel_err(out.cpu(), ref) < 0.05

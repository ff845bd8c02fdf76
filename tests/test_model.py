"""gtkernels.models.GeometricTransformer: parity with gtkernels_py's model, layouts, forces, presets."""
import pytest
import torch

import gtkernels_py
from gtkernels.data import batch_vector, pack, pad
from gtkernels.data.units import atomref
from gtkernels.models import PRESETS, GeometricTransformer
from conftest import requires_cpu
from helpers import qm9_molecules, rel_err

BACKENDS = ["reference", pytest.param("cpu", marks=requires_cpu)]


def _pair(backend, dtype=torch.float64, **kw):
    torch.manual_seed(0)
    ref_atomref = torch.as_tensor(atomref("U0")) / 1000
    m = GeometricTransformer("tiny", backend=backend, mean=-5.0, std=2.0, atomref=ref_atomref, **kw).to(dtype)
    r = gtkernels_py.GeometricTransformer(**PRESETS["tiny"]).to(dtype)
    r.load_state_dict(m.state_dict())
    return m, r


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_reference_model(backend):
    m, r = _pair(backend)
    mols = qm9_molecules(6)
    z, pos, mask = pad(mols, torch.float64)
    assert rel_err(m(z, pos, mask), r(z, pos, mask)) < 1e-10
    zp, pp, cu = pack(mols, torch.float64)
    assert rel_err(m(zp, pp, cu_seqlens=cu), r(z, pos, mask)) < 1e-10
    assert rel_err(m.forward_batch(zp, pp, batch_vector(cu)), r(z, pos, mask)) < 1e-10
    # the state-dict names are the reference's, both ways
    assert set(m.state_dict()) == set(r.state_dict())


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_and_position_cast(backend):
    m, r = _pair(backend, torch.float32)
    z, pos, mask = pad(qm9_molecules(4), torch.float64)
    out = m(z, pos, mask)  # float64 positions, float32 weights: cast once at model level
    assert out.dtype == torch.float32
    assert rel_err(out, r(z, pos.float(), mask)) < 1e-5


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
    e, f = m.forces(z, pos, mask)
    p = pos.clone().requires_grad_()
    (g,) = torch.autograd.grad(r(z, p, mask).sum(), p)
    assert rel_err(f, -g) < 1e-8 and f.shape == pos.shape
    assert float(f[~mask].abs().max()) == 0.0
    m.target = "gap"
    with pytest.raises(ValueError, match="energy"):
        m.forces(z, pos, mask)


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

"""PyG conventions: model(data) / model(batch) for torch_geometric Data/Batch look-alikes
(duck-typed .z, .pos, .batch), forces with a batch vector, QM9 as a torch.utils.data.Dataset."""
import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from gtkernels.data import batch_vector, pack, pad, qm9_sample
from gtkernels.data.qm9 import QM9, MoleculeDataset
from gtkernels.data.units import TARGET_NAMES
from conftest import requires_qm9pack
from helpers import qm9_molecules, rel_err, tiny_energy_model

HAS_PYG = importlib.util.find_spec("torch_geometric") is not None


@pytest.fixture(scope="module")
def model():
    return tiny_energy_model("reference").double()


@pytest.fixture(scope="module")
def mols():
    return qm9_molecules(4)


def _padded_reference(model, mols):
    z, pos, mask = pad(mols, torch.float64)
    with torch.no_grad():
        return model(z, pos, mask)


def test_model_of_a_batch_look_alike(model, mols):
    z, pos, cu = pack(mols, torch.float64)
    b = batch_vector(cu)
    want = _padded_reference(model, mols)
    with torch.no_grad():
        assert rel_err(model(SimpleNamespace(z=z, pos=pos, batch=b, num_graphs=len(mols))), want) < 1e-12
        assert rel_err(model(SimpleNamespace(z=z, pos=pos, batch=b)), want) < 1e-12   # no num_graphs
        assert rel_err(model({"z": z, "pos": pos, "batch": b}), want) < 1e-12          # a dict
        # one Data (no batch): one molecule
        one = mols[2]
        out = model(SimpleNamespace(z=torch.as_tensor(one.z.astype(np.int64)), pos=torch.as_tensor(one.pos)))
    assert out.shape == (1,) and rel_err(out, want[2:3]) < 1e-12


def test_forces_with_a_batch_vector(model, mols):
    z, pos, cu = pack(mols, torch.float64)
    b = batch_vector(cu)
    zp, pp, mask = pad(mols, torch.float64)
    e_ref, f_ref = model.forces(zp, pp, mask)
    e, f = model.forces(z, pos, batch=b)
    assert f.shape == pos.shape and rel_err(e, e_ref) < 1e-12
    assert rel_err(f, f_ref[mask]) < 1e-10
    e2, f2 = model.forces(SimpleNamespace(z=z, pos=pos, batch=b))
    assert rel_err(e2, e_ref) < 1e-12 and rel_err(f2, f_ref[mask]) < 1e-10
    with pytest.raises(ValueError, match="not several"):
        model.forces(z, pos, batch=b, cu_seqlens=cu)


def test_batch_input_errors(model, mols):
    z, pos, cu = pack(mols, torch.float64)
    b = batch_vector(cu)
    with pytest.raises(TypeError, match=r"torch_geometric Data/Batch.*got object"):
        model(object())
    with pytest.raises(ValueError, match=r"data.batch must be a tensor \[T\]"):
        model(SimpleNamespace(z=z, pos=pos, batch=b[:-1]))
    with pytest.raises(ValueError, match="sorted"):
        model(SimpleNamespace(z=z, pos=pos, batch=b.flip(0)))
    with pytest.raises(ValueError, match=r"data.z must be \[T\] and data.pos \[T, 3\]"):
        model(SimpleNamespace(z=z[None], pos=pos[None]))
    with pytest.raises(TypeError, match="alone"):
        model(SimpleNamespace(z=z, pos=pos), pos)
    with pytest.raises(TypeError, match="needs the positions"):
        model(z)


@pytest.mark.skipif(not HAS_PYG, reason="torch_geometric is not installed in this environment (optional; the "
                                        "duck-typed tests above cover the same attribute access)")
def test_real_torch_geometric_batch(model, mols):
    from torch_geometric.data import Batch, Data
    data = [Data(z=torch.as_tensor(m.z.astype(np.int64)), pos=torch.as_tensor(m.pos)) for m in mols]
    want = _padded_reference(model, mols)
    with torch.no_grad():
        assert rel_err(model(Batch.from_data_list(data)), want) < 1e-12
        assert rel_err(model(data[1]), want[1:2]) < 1e-12


# ---------------------------------------------------------------------------------------- Dataset protocol
class _SampleDataset(MoleculeDataset):
    """QM9's Dataset protocol over the committed sample's arrays (no qm9pack needed)."""

    def __init__(self):
        s = qm9_sample()
        self.z, self.pos, self.offsets, self.index, self._targets = s.z, s.pos, s.offsets, s.index, s._targets
        self.n_atoms = s.n_atoms
        self.sample = s

    def __len__(self):
        return len(self.index)


def test_dataset_items_and_dataloader(model):
    ds = _SampleDataset()
    item = ds[3]
    m = ds.sample.molecule(3)
    assert set(item) == {"z", "pos", "y", "index"}
    assert item["z"].dtype == torch.int64 and item["z"].tolist() == m.z.tolist()
    assert item["pos"].dtype == torch.float32 and item["pos"].shape == (len(m.z), 3)
    assert np.allclose(item["pos"].numpy(), m.pos, atol=1e-6)
    assert item["y"].dtype == torch.float64 and item["y"].shape == (len(TARGET_NAMES),)
    assert float(item["y"][TARGET_NAMES.index("U0")]) == ds.sample.targets("U0")[3]
    assert item["index"] == int(ds.sample.index[3])
    assert ds[-1]["index"] == int(ds.sample.index[-1])
    with pytest.raises(IndexError, match="out of range"):
        ds[len(ds)]
    with pytest.raises(TypeError, match="Subset"):
        ds[1:3]
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, [0, 5, 9]), batch_size=3,
                                         collate_fn=MoleculeDataset.collate)
    batch = next(iter(loader))
    assert batch["num_graphs"] == 3 and batch["y"].shape == (3, len(TARGET_NAMES))
    assert batch["batch"].tolist() == sum(([k] * len(ds[i]["z"]) for k, i in enumerate([0, 5, 9])), [])
    with torch.no_grad():
        out = model(batch)
    want = _padded_reference(model, [ds.sample.molecule(i)._replace(pos=ds[i]["pos"].double().numpy())
                                     for i in (0, 5, 9)])
    assert rel_err(out, want) < 1e-12


@requires_qm9pack
def test_qm9_is_a_dataset(tmp_path):
    ds = QM9(cache=str(tmp_path), limit=20, progress=False)
    assert len(ds) == 20 and len(list(iter(ds))) == 20   # __getitem__ + IndexError: iteration works
    first = ds[0]
    assert first["index"] == 1 and first["z"].tolist() == [6, 1, 1, 1, 1]   # QM9 molecule 1 is methane
    assert float(first["y"][TARGET_NAMES.index("U0")]) == ds.targets("U0")[0]
    dom = ds.domain()
    assert dom["max_atoms"] == int(ds.n_atoms.max()) and set(dom["elements"]) <= {1, 6, 7, 8, 9}

"""QM9 cache (counts, units, atomrefs, corruption), splits, batching, user molecules, augmentation."""
import os

import h5py
import numpy as np
import pytest
import torch

from gtkernels.data import (QM9, MoleculeFileError, batch_vector, cu_seqlens_from_batch, make_batches,
                            make_split, merge_pairs, pack, padding_overhead, read_xyz)
from gtkernels.data.qm9 import cache_path
from gtkernels.data.units import HARTREE_TO_MEV, atomref
from conftest import requires_ase, requires_qm9pack


@pytest.fixture(scope="session")
def qm9_full(tmp_path_factory):
    """The full dataset, converted once per test session into a temporary cache (~7 s)."""
    return QM9(cache=str(tmp_path_factory.mktemp("qm9cache")), progress=False)


@requires_qm9pack
def test_counts(qm9_full):
    ds = qm9_full
    assert len(ds) == 130_831
    assert ds.n_atoms.max() == 29 and ds.n_atoms.min() >= 1
    assert set(np.unique(ds.z)) == {1, 6, 7, 8, 9}
    assert ds.offsets[-1] == len(ds.z) == len(ds.pos)
    assert ds.z.dtype == np.uint8 and ds.pos.dtype == np.float32 and ds.offsets.dtype == np.int64


@requires_qm9pack
def test_units_and_atomrefs(qm9_full):
    ds = qm9_full
    m = ds.molecule(0)
    assert m.index == 1 and sorted(m.z.tolist()) == [1, 1, 1, 1, 6]  # methane
    assert ds.targets("U0")[0] == pytest.approx(-40.47893 * 27211.386, abs=1e-6)
    assert ds.targets("gap")[0] == pytest.approx(0.5048 * HARTREE_TO_MEV)
    assert ds.targets("alpha")[0] == pytest.approx(13.21)
    assert ds.targets("Cv")[0] == pytest.approx(6.469)
    ref = atomref("U0")
    assert ref[6] == pytest.approx(-37.846772 * HARTREE_TO_MEV) and ref[1] == pytest.approx(-0.500273 * HARTREE_TO_MEV)
    assert atomref("Cv")[9] == 2.981 and atomref("zpve").sum() == 0 and atomref("mu").sum() == 0
    # methane's atomisation energy ≈ −17.1 eV (a known value)
    atomisation = ds.targets("U0")[0] - ref[m.z].sum()
    assert -17.3e3 < atomisation < -16.9e3


@requires_qm9pack
def test_second_load_is_fast_and_reused(qm9_full):
    again = QM9(cache=os.path.dirname(qm9_full.path), progress=False)
    assert not again.rebuilt and len(again) == len(qm9_full)


def test_split_reproducible(tmp_path):
    a, b, c = make_split(130_831, seed=3), make_split(130_831, seed=3), make_split(130_831, seed=4)
    assert [len(a[k]) for k in ("train", "val", "test")] == [110_000, 10_000, 10_831]
    assert all(np.array_equal(a[k], b[k]) for k in a) and not np.array_equal(a["test"], c["test"])
    assert not set(a["train"]) & set(a["test"]) and not set(a["train"]) & set(a["val"])
    from gtkernels.data import load_split, save_split
    save_split(a, str(tmp_path / "split.json"), seed=3)
    back = load_split(str(tmp_path / "split.json"))
    assert all(np.array_equal(a[k], back[k]) for k in a)


@requires_qm9pack
@pytest.mark.parametrize("damage", ["truncate", "no_marker", "flip", "garbage"])
def test_corrupted_cache_is_rebuilt(tmp_path, damage):
    ds = QM9(cache=str(tmp_path), limit=50, progress=False)
    assert ds.rebuilt and len(ds) == 50
    path = cache_path(str(tmp_path), 50)
    if damage == "truncate":
        size = os.path.getsize(path)
        with open(path, "r+b") as fh:
            fh.truncate(size // 2)
    elif damage == "no_marker":
        with h5py.File(path, "r+") as f:
            del f.attrs["complete"]
    elif damage == "flip":
        with h5py.File(path, "r+") as f:
            f["targets"][3, 7] = 0.0
    else:
        with open(path, "wb") as fh:
            fh.write(b"not an hdf5 file")
    again = QM9(cache=str(tmp_path), limit=50, progress=False)
    assert again.rebuilt and len(again) == 50
    assert np.array_equal(again.targets("U0"), ds.targets("U0"))


@requires_qm9pack
def test_env_cache_override(tmp_path, monkeypatch):
    monkeypatch.setenv("GTKERNELS_CACHE", str(tmp_path))
    ds = QM9(limit=5, progress=False)
    assert ds.path.startswith(str(tmp_path))


def test_batching_layouts_and_overhead():
    rng = np.random.default_rng(0)
    sizes = rng.integers(3, 30, 2000)
    plain = make_batches(sizes, 64, np.random.default_rng(1))
    bucketed = make_batches(sizes, 64, np.random.default_rng(1), bucket=True)
    assert sorted(np.concatenate(bucketed).tolist()) == list(range(2000))
    o1, o2 = padding_overhead(sizes, plain), padding_overhead(sizes, bucketed)
    assert o1["packed"] == 0 and o2["padded_atoms"] < o1["padded_atoms"] / 3
    cu = torch.tensor([0, 2, 5, 9], dtype=torch.int32)
    b = batch_vector(cu)
    assert b.tolist() == [0, 0, 1, 1, 1, 2, 2, 2, 2]
    assert torch.equal(cu_seqlens_from_batch(b), cu)


@requires_ase
def test_read_xyz_and_errors(tmp_path):
    good = tmp_path / "good.xyz"
    good.write_text("3\nwater\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n2\nH2\nH 0 0 0\nH 0.74 0 0\n")
    mols = read_xyz(str(good))
    assert [m.z.tolist() for m in mols] == [[8, 1, 1], [1, 1]]
    bad = tmp_path / "bad.xyz"
    bad.write_text("3\nwater\nO 0 0 0\nH 0.96 zero 0\nH -0.24 0.93 0\n")
    with pytest.raises(MoleculeFileError, match=r"bad\.xyz, line 4"):
        read_xyz(str(bad))
    short = tmp_path / "short.xyz"
    short.write_text("3\nwater\nO 0 0 0\n")
    with pytest.raises(MoleculeFileError, match=r"short\.xyz, line 4"):
        read_xyz(str(short))
    unk = tmp_path / "unk.xyz"
    unk.write_text("1\nx\nXx 0 0 0\n")
    with pytest.raises(MoleculeFileError, match="unknown element 'Xx'"):
        read_xyz(str(unk))


def _dist(p):
    return np.sqrt(((p[:, None, :] - p[None, :, :]) ** 2).sum(-1))


@requires_qm9pack
def test_augmentation_semantics(qm9_full):
    ds = qm9_full
    idx = [100, 5000, 77777, 130000, 12, 99999]
    mols = [ds.molecule(i) for i in idx]
    z, pos, cu = pack(mols, torch.float64)
    y = ds.targets("U0")[idx]
    z2, pos2, cu2, y2 = merge_pairs(z.numpy(), pos.numpy(), cu.numpy(), y)
    assert pos2.dtype == np.float64 and len(cu2) == len(idx) + 1
    h = len(idx) // 2
    for i in range(len(idx)):
        p = pos2[cu2[i]:cu2[i + 1]]
        if i < h:
            a, b = mols[i], mols[h + i]
            assert np.array_equal(y2[i], y[i] + y[h + i])
            assert z2[cu2[i]:cu2[i + 1]].tolist() == a.z.tolist() + b.z.tolist()
            pa, pb = p[:len(a.z)], p[len(a.z):]
            assert np.array_equal(_dist(pa), _dist(a.pos))   # exactly, not approximately
            assert np.array_equal(_dist(pb), _dist(b.pos))
            assert np.array_equal(pb - 1e4, b.pos)
            assert _dist(p)[:len(a.z), len(a.z):].min() > 1e4
        else:
            assert np.array_equal(p, mols[i].pos) and y2[i] == y[i]


@requires_qm9pack
def test_sample_matches_full_dataset(qm9_full):
    """The committed sample (tests/data/qm9_sample.npz) is what its provenance says: those rows of the dataset,
    chosen by the stated rule, with the same atoms, targets and (before the cache's float32 rounding) positions."""
    from gtkernels.data import qm9_sample
    s, ds = qm9_sample(), qm9_full
    random = np.random.default_rng(0).choice(len(ds), size=1024, replace=False)
    largest = np.flatnonzero(ds.n_atoms == ds.n_atoms.max())
    assert s.row.tolist() == sorted(set(random.tolist()) | set(range(8)) | set(largest.tolist()))
    assert s.row[s.groups["random"]].tolist() == sorted(random.tolist())
    assert s.row[s.groups["largest"]].tolist() == largest.tolist()
    assert np.array_equal(s.index, ds.index[s.row]) and np.array_equal(s.n_atoms, ds.n_atoms[s.row])
    for name in ("mu", "alpha", "homo", "gap", "r2", "zpve", "U0", "G", "Cv"):
        assert np.array_equal(s.targets(name), ds.targets(name)[s.row]), name   # bit-identical
    for i in range(0, len(s), 7):
        a, b = s.molecule(i), ds.molecule(int(s.row[i]))
        assert a.index == b.index and np.array_equal(a.z, b.z)
        assert np.abs(a.pos - b.pos).max() <= 1e-6   # the cache holds float32 (~6e-7 Å at 10 Å)

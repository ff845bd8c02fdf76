"""The committed QM9 sample (tests/data/qm9_sample.npz): integrity, provenance, contents, physics, loader errors.

Needs no qm9pack; the comparison with the full dataset is in test_qm9_data.py (test_sample_matches_full_dataset).
"""
import hashlib
import json
import os
import re

import numpy as np
import pytest

from gtkernels.data import QM9Sample, qm9_sample
from gtkernels.data.qm9_sample import DEFAULT_PATH
from gtkernels.data.units import HARTREE_TO_MEV, atomref
from helpers import qm9_molecules

PROVENANCE = os.path.splitext(DEFAULT_PATH)[0] + ".provenance.json"


@pytest.fixture(scope="module")
def sample():
    return qm9_sample()


def test_file_is_the_one_the_provenance_describes():
    with open(DEFAULT_PATH, "rb") as fh:
        data = fh.read()
    prov = json.load(open(PROVENANCE))
    assert hashlib.sha256(data).hexdigest() == prov["sha256"], "sample changed without its provenance file"
    assert len(data) == prov["bytes"] < 2 * 2 ** 20
    src = prov["source"]
    assert src["package"] == "qm9pack" and re.fullmatch(r"\d+\.\d+(\.\d+)?", src["version"])
    assert sorted(src["files"]) == ["qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv"]
    assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in src["files"].values())
    assert os.path.exists(os.path.join(os.path.dirname(DEFAULT_PATH), "..", "..", "tools", "make_qm9_sample.py"))


def test_groups_and_counts(sample):
    prov = json.load(open(PROVENANCE))
    assert len(sample) == prov["molecules"] and len(sample.z) == prov["atoms"]
    sizes = {g: len(v) for g, v in sample.groups.items()}
    assert sizes == {"random": 1024, "head": 8, "largest": 35}
    assert len(sample) == len(np.unique(np.concatenate(list(sample.groups.values()))))  # the union, nothing else
    assert np.all(np.diff(sample.row) > 0) and np.all(np.diff(sample.index) > 0)  # QM9 order, no duplicates
    assert sample.n_atoms.max() == 29 and set(sample.n_atoms[sample.groups["largest"]]) == {29}
    assert (sample.n_atoms == 29).sum() == 35           # no 29-atom molecule outside the "largest" group
    assert sample.index[sample.groups["head"]].tolist() == list(range(1, 9))
    assert sample.row[sample.groups["head"]].tolist() == list(range(8))
    assert sample.row.max() < 130_831 and sample.row.min() == 0
    assert set(np.unique(sample.z).tolist()) == {1, 6, 7, 8, 9}
    assert sample.pos.dtype == np.float64


def test_methane_is_qm9_molecule_one(sample):
    m = sample.molecule(0)
    assert m.index == 1 and sorted(m.z.tolist()) == [1, 1, 1, 1, 6]
    assert m.pos[0].tolist() == [-0.0126981359, 1.0858041578, 0.0080009958]   # QM9's dsgdb9nsd_000001.xyz
    # published values of QM9 molecule 1 (Hartree, Debye, a0^3, GHz)
    assert sample.targets("U0")[0] == pytest.approx(-40.47893 * HARTREE_TO_MEV, abs=1e-6)
    assert sample.targets("gap")[0] == pytest.approx(0.5048 * HARTREE_TO_MEV)
    assert sample.targets("alpha")[0] == 13.21 and sample.targets("mu")[0] == 0.0
    assert sample.targets("A")[0] == 157.7118 and sample.targets("Cv")[0] == 6.469
    ch = np.linalg.norm(m.pos[1:] - m.pos[0], axis=1)
    assert np.all(np.abs(ch - 1.09) < 0.01)   # C-H bonds of methane, Å


def test_geometry_is_in_angstrom_and_bonded(sample):
    for i in range(len(sample)):
        p = sample.molecule(i).pos
        d = np.sqrt(((p[:, None] - p[None]) ** 2).sum(-1))
        np.fill_diagonal(d, np.inf)
        nearest = d.min(1)
        assert nearest.min() > 0.9, (i, nearest.min())   # shortest QM9 bond: O-H / N-H ~0.96-1.01 Å
        assert nearest.max() < 1.8, (i, nearest.max())   # every atom is bonded to something (Bohr would be ~1.9x)


def test_targets_are_consistent(sample):
    t = sample.targets
    # gap = LUMO - HOMO, each stored to 1e-4 Hartree
    assert np.abs(t("gap") - (t("lumo") - t("homo"))).max() <= 1.5e-4 * HARTREE_TO_MEV + 1e-6
    assert np.all(t("homo") < t("lumo"))
    # thermodynamics: U(298 K) > U0, H = U + kT, G = H - TS < H
    kt = 0.025693 * 1000  # meV at 298.15 K
    assert np.all(t("U") > t("U0")) and np.allclose(t("H") - t("U"), kt, atol=0.1) and np.all(t("G") < t("H"))
    for name in ("alpha", "r2", "zpve", "Cv"):
        assert np.all(t(name) > 0), name
    assert np.all(t("mu") >= 0)
    # every molecule is bound: U0 below the sum of its free atoms
    ref = atomref("U0")
    atomisation = t("U0") - np.add.reduceat(ref[sample.z], sample.offsets[:-1])
    assert atomisation.max() < -1e3 and atomisation.min() > -1.5e5   # -1 eV ... -150 eV
    with pytest.raises(ValueError, match="unknown target"):
        t("bogus")


def test_helpers_use_the_sample():
    mols = qm9_molecules(6, seed=1)
    assert [len(m.z) for m in mols[:3]] == [29, 29, 29]
    assert all(m.index > 0 for m in mols) and len(qm9_molecules(1)) == 1


def test_loader_errors(tmp_path, monkeypatch, sample):
    missing = str(tmp_path / "nothing.npz")
    with pytest.raises(FileNotFoundError, match="GTKERNELS_QM9_SAMPLE"):
        qm9_sample(missing)
    np.savez(tmp_path / "other.npz", z=np.zeros(3))
    with pytest.raises(ValueError, match="missing"):
        qm9_sample(str(tmp_path / "other.npz"))
    arrays = dict(np.load(DEFAULT_PATH))
    arrays["offsets"] = arrays["offsets"][:-1]
    np.savez(tmp_path / "broken.npz", **arrays)
    with pytest.raises(ValueError, match="inconsistent"):
        qm9_sample(str(tmp_path / "broken.npz"))
    arrays = dict(np.load(DEFAULT_PATH))
    np.savez(tmp_path / "copy.npz", **arrays)
    monkeypatch.setenv("GTKERNELS_QM9_SAMPLE", str(tmp_path / "copy.npz"))
    copy = qm9_sample()
    assert isinstance(copy, QM9Sample) and copy.path.endswith("copy.npz") and len(copy) == len(sample)
    with pytest.raises(ValueError, match="unknown group"):
        copy.molecules("smallest")

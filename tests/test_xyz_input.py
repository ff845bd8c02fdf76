"""XYZ input errors name the file, the molecule (counted from 1) and the line, and say what to fix;
out-of-domain molecules are predicted with a warning saying what and by how much, periodic frames are an error."""
import warnings

import numpy as np
import pytest

from gtkernels.data import MoleculeFileError, qm9_sample, read_xyz
from gtkernels.data.molecules import OutOfDomainWarning, check_domain, training_domain
from conftest import requires_ase
from helpers import random_molecule, tiny_run

pytestmark = requires_ase
WATER = "3\nwater\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n"
DOMAIN = {"elements": [1, 6, 7, 8, 9], "max_atoms": 29, "min_distance": 0.96}


def _write(tmp_path, text, name="in.xyz"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_numeric_element_symbol(tmp_path):
    path = _write(tmp_path, WATER + "2\nCO\n6 0 0 0\n8 1.13 0 0\n")
    with pytest.raises(MoleculeFileError, match=r"in\.xyz, line 8 \(molecule 2\): .*symbol.*number '6' \(write 'C'"):
        read_xyz(path)


def test_ase_dummy_atom_x(tmp_path):
    path = _write(tmp_path, "2\nx\nX 0 0 0\nH 0.7 0 0\n")
    with pytest.raises(MoleculeFileError, match=r"in\.xyz, line 3 \(molecule 1\): 'X' is ASE's dummy atom"):
        read_xyz(path)


def test_unsupported_element_is_named_by_symbol(tmp_path, capsys):
    from gtkernels.cli import run as cli
    run = tiny_run(str(tmp_path / "run"))
    path = _write(tmp_path, WATER + "2\nUO\nU 0 0 0\nO 1.8 0 0\n")
    with pytest.raises(SystemExit) as exc:
        cli(["predict", run, path])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "in.xyz, molecule 2: contains U, beyond" in err and "Z=92" not in err and "Traceback" not in err


def test_nan_coordinate(tmp_path):
    path = _write(tmp_path, WATER + WATER.replace("H 0.96 0 0", "H nan 0 0"))
    with pytest.raises(MoleculeFileError, match=r"in\.xyz, line 9 \(molecule 2\): coordinates must be finite.*nan"):
        read_xyz(path)


def test_infinite_coordinate(tmp_path):
    path = _write(tmp_path, WATER.replace("H -0.24 0.93 0", "H -0.24 inf 0"))
    with pytest.raises(MoleculeFileError, match=r"in\.xyz, line 5 \(molecule 1\): coordinates must be finite"):
        read_xyz(path)


def test_duplicate_atom(tmp_path, capsys):
    path = _write(tmp_path, WATER + "3\nwater again\nO 0 0 0\nH 0.96 0 0\nH 0.96 0 0\n")
    with pytest.raises(ValueError) as exc:
        read_xyz(path)
    msg = str(exc.value)
    assert "in.xyz, molecule 2 (line 6): atom 2 (H, line 9) and atom 3 (H, line 10) are 0 Å apart" in msg
    assert "delete the duplicate" in msg and "validate" not in msg
    from gtkernels.cli import run as cli   # the CLI: exit 2, the same message, no traceback
    with pytest.raises(SystemExit) as e:
        cli(["predict", tiny_run(str(tmp_path / "run")), path])
    assert e.value.code == 2 and "molecule 2 (line 6)" in capsys.readouterr().err


def test_other_file_errors_count_molecules_from_1(tmp_path):
    path = _write(tmp_path, WATER + "3\nshort\nO 0 0 0\n")
    with pytest.raises(MoleculeFileError, match=r"in\.xyz, line 9 \(molecule 2\): file ends after 1 of 3 atoms"):
        read_xyz(path)


def test_periodic_frame_is_an_error(tmp_path):
    cell = 'Lattice="10 0 0 0 10 0 0 0 10" Properties=species:S:1:pos:R:3'
    path = _write(tmp_path, WATER + WATER.replace("water", cell))
    with pytest.raises(MoleculeFileError,
                       match=r"in\.xyz, molecule 2 \(line 6\): periodic \(pbc=\[True, True, True\]\)"):
        read_xyz(path)
    # the same cell with pbc switched off is a finite molecule
    read_xyz(_write(tmp_path, WATER.replace("water", cell + ' pbc="F F F"'), "open.xyz"))


def test_unseen_element_warns_in_predict(tmp_path, capsys):
    from gtkernels.cli import run as cli
    run = tiny_run(str(tmp_path / "run"))
    path = _write(tmp_path, WATER + "3\nH2S\nS 0 0 0\nH 1.34 0 0\nH -0.3 1.3 0\n")
    values = cli(["predict", run, path])
    assert len(values) == 2
    err = capsys.readouterr().err
    assert "warning: " in err and "1 of 2 molecule(s) (2) contain S, which the training data did not have" in err
    assert "(it had H, C, N, O, F)" in err


def test_large_molecule_warns():
    big = random_molecule(500, np.random.default_rng(0), min_dist=1.0)
    with pytest.warns(OutOfDomainWarning) as rec:
        msgs = check_domain([big], DOMAIN, source="big.xyz")
    assert len(rec) == 1 and len(msgs) == 1
    assert "1 molecule(s) (1) are larger than any training molecule: up to 500 atoms vs at most 29" in msgs[0]
    assert "17.2x" in msgs[0]


def test_close_atoms_warn_once_with_the_closest():
    sample = qm9_sample()
    mols = [sample.molecule(i) for i in range(4)]
    squeezed = [m._replace(pos=m.pos * f) for m, f in zip(mols, (1.0, 0.5, 1.0, 0.7))]
    with pytest.warns(OutOfDomainWarning) as rec:
        msgs = check_domain(squeezed, DOMAIN, source="s.xyz")
    assert len(rec) == 1
    assert "2 molecule(s) (2, 4) have atoms closer than any pair in the training data" in msgs[0]
    d = min(np.min(_pdist(m.pos)) for m in squeezed)
    assert f"down to {d:.4g} Å" in msgs[0] and "vs 0.96 Å in training" in msgs[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_domain(mols, DOMAIN) == []   # QM9's own molecules: nothing to say


def _pdist(p):
    d = np.sqrt(((p[:, None] - p[None]) ** 2).sum(-1))
    return d[np.triu_indices(len(p), 1)]


def test_training_domain_matches_brute_force():
    sample = qm9_sample()
    idx = np.arange(0, len(sample.n_atoms), 7)
    dom = training_domain(sample, idx)
    mols = [sample.molecule(int(i)) for i in idx]
    assert dom["elements"] == sorted({int(z) for m in mols for z in m.z})
    assert dom["max_atoms"] == max(len(m.z) for m in mols)
    assert dom["min_distance"] == pytest.approx(min(_pdist(m.pos).min() for m in mols if len(m.z) > 1), rel=1e-12)

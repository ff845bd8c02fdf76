"""Energies to full precision: GTCalculator and `gtkernels predict`, float32 network with a
float64 read-out; forces consistent with those energies; the predict CLI's options; out-of-domain and
periodic Atoms."""
import copy
import re
import warnings

import numpy as np
import pytest
import torch

from gtkernels.data.units import atomref
from conftest import requires_ase, requires_extension
from helpers import tiny_energy_model, tiny_run

pytestmark = requires_ase
EPS32 = float(np.finfo(np.float32).eps)
BACKENDS = ["reference", pytest.param("cpu", marks=requires_extension)]


def _methanol(model):
    from ase.build import molecule
    from gtkernels.ase_calculator import GTCalculator
    atoms = molecule("CH3OH")
    atoms.calc = GTCalculator(model)
    return atoms


def _head_scale(model, atoms) -> float:
    """Σ_i |head(h_i)·σ| in eV: the size of the float32 per-atom outputs, whose rounding is the energy's noise."""
    outs = []
    hook = model.head.register_forward_hook(lambda mod, inp, out: outs.append(out.detach()))
    try:
        atoms.calc.reset()
        atoms.get_potential_energy()
    finally:
        hook.remove()
    return float(outs[-1].double().abs().sum() * model.std) / 1000.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_energy_is_float64_accurate(backend):
    """≤ 1e-6 relative against the same weights in float64, and Σ atomref is added without float32 rounding."""
    m = tiny_energy_model(backend)
    atoms = _methanol(m)
    e32 = atoms.get_potential_energy()
    e64 = _methanol(copy.deepcopy(m).double()).get_potential_energy()
    assert abs(e32 - e64) <= 1e-6 * abs(e64)
    # E − Σ atomref (QM9's table, summed here in float64) is the network part, to float32's resolution of it
    ref_sum = float(atomref("U0")[atoms.numbers].sum()) / 1000.0
    z = torch.as_tensor(atoms.numbers)[None]
    with torch.no_grad():
        net = float(m(z, torch.as_tensor(atoms.positions)[None], include_atomref=False)[0]) / 1000.0
    assert abs((e32 - ref_sum) - net) <= 1e-12 * abs(ref_sum)   # float32 Σ atomref would be off by ~1e-4 eV


@pytest.mark.parametrize("backend", BACKENDS)
def test_six_small_displacements_give_six_energies(backend):
    """The float32 read-out gave one energy for all six (a 2.4e-4 eV staircase at 3150 eV)."""
    atoms = _methanol(tiny_energy_model(backend))
    f = atoms.get_forces()
    i = int(np.argmax(np.abs(f).max(1)))
    c = int(np.argmax(np.abs(f[i])))
    energies = []
    p0 = atoms.positions.copy()
    for k in range(6):
        atoms.positions = p0
        atoms.positions[i, c] += k * 1e-4
        energies.append(atoms.get_potential_energy())
    assert len(set(energies)) == 6
    # and they follow the force: E(k·d) − E(0) ≈ −F·k·d, to O(d²) (d = 1e-4 Å, |F| ~ 0.5 eV/Å)
    steps = np.arange(6) * 1e-4
    assert np.allclose(np.array(energies) - energies[0], -f[i, c] * steps, rtol=0.02, atol=1e-7)
    # moving along the force lowers the energy
    atoms.positions = p0 + 1e-3 * f / np.linalg.norm(f)
    assert atoms.get_potential_energy() < energies[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_finite_difference_forces(backend):
    """Central differences at h = 1e-3 Å match −∂E/∂x. Tolerance: truncation h²·|F|/ℓ² (ℓ = 0.1 Å, the
    shortest length over which the model's features vary) plus the float32 noise of the energy over h:
    32·eps32·Σ|head·σ| (a few ulps of each per-atom output, through the 2 blocks) / h."""
    m = tiny_energy_model(backend)
    atoms = _methanol(m)
    f = atoms.get_forces()
    h = 1e-3
    tol = h ** 2 * np.abs(f).max() / 0.1 ** 2 + 32 * EPS32 * _head_scale(m, atoms) / h
    assert tol < 0.01 * np.abs(f).max()   # the check can fail: 1 % of the largest force
    coords = [(i, c) for i in range(len(atoms)) for c in range(3)]
    if backend == "reference":   # the slow backend: a few coordinates
        coords = coords[::5]
    p0 = atoms.positions.copy()
    for i, c in coords:
        atoms.positions = p0
        atoms.positions[i, c] += h
        ep = atoms.get_potential_energy()
        atoms.positions[i, c] -= 2 * h
        em = atoms.get_potential_energy()
        fd = -(ep - em) / (2 * h)
        assert abs(fd - f[i, c]) <= tol, (i, c, fd, f[i, c], tol)


def test_periodic_atoms_are_an_error_and_domain_warnings():
    atoms = _methanol(tiny_energy_model("reference"))
    atoms.set_cell([10, 10, 10])
    atoms.pbc = True
    with pytest.raises(ValueError, match="periodic.*pbc = False"):
        atoms.get_potential_energy()
    atoms.pbc = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        atoms.get_potential_energy()   # H, C, O, 6 atoms, ordinary distances: no warning
    from ase import Atoms
    from gtkernels.ase_calculator import GTCalculator
    from gtkernels.data.molecules import OutOfDomainWarning
    h2s = Atoms("SH2", positions=[[0, 0, 0], [1.34, 0, 0], [-0.3, 1.3, 0]])
    h2s.calc = GTCalculator(tiny_energy_model("reference"), domain={"elements": [1, 6, 7, 8, 9], "max_atoms": 29,
                                                                    "min_distance": 0.96})
    with pytest.warns(OutOfDomainWarning, match=r"contain S, .*\(it had H, C, N, O, F\)"):
        h2s.get_potential_energy()
    h2s.numbers = [92, 1, 1]
    with pytest.raises(ValueError, match=r"contains U, beyond .*embedding"):
        h2s.get_potential_energy()


# ------------------------------------------------------------------------------------------------ predict CLI
def _xyz(path, n_copies=1):
    text = "".join(f"6\nmethanol {k}\nC -0.047 0.665 0\nO -0.047 -0.758 0\nH -1.086 0.976 0\n"
                   f"H 0.437 1.080 0.890\nH 0.437 1.080 -0.890\nH 0.90 -1.1{k % 10} 0\n" for k in range(n_copies))
    path.write_text(text)
    return str(path)


def test_predict_full_precision_and_options(tmp_path, capsys):
    from gtkernels.cli import run as cli
    run = tiny_run(str(tmp_path / "run"))
    xyz = _xyz(tmp_path / "m.xyz", 3)
    threads = torch.get_num_threads()
    try:
        values = cli(["predict", run, xyz, "--backend", "reference", "--device", "cpu", "--threads", "1"])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    out, err = capsys.readouterr()
    assert "backend reference, device cpu, dtype float32" in err and "1 thread" in err
    printed = [float(x) for x in re.findall(r"molecule \d+\tU0 = (\S+) meV", out)]
    assert len(printed) == 3 and "m.xyz, molecule 1\t" in out
    # 10 significant digits: what is printed is the value to 1e-9 relative (".6g" was good to ~1 meV in 1e6)
    for p, v in zip(printed, values):
        assert abs(p - v) <= 1e-9 * abs(v)
    # the three methanols differ only in one H's y (1e-2 Å steps): three different energies, ~1e6 meV each
    assert len(set(printed)) == 3 and all(-3.3e6 < v < -3.0e6 for v in values)
    # the cpu backend and the reference agree to float32 resolution of the network part
    from gtkernels.evaluate import predict
    if "cpu" in __import__("gtkernels").backends():
        cpu_values = predict(run, xyz, backend="cpu", progress=False)
        assert np.allclose(cpu_values, values, rtol=1e-9)


def test_predict_progress_bar_and_bad_threads(tmp_path, capsys):
    from gtkernels.evaluate import predict
    run = tiny_run(str(tmp_path / "run"))
    xyz = _xyz(tmp_path / "m.xyz", 4)
    lines = []
    values = predict(run, xyz, backend="reference", progress=True, chunk=2, log=lines.append)
    err = capsys.readouterr().err
    assert len(values) == 4 and "predict" in err and "4/4" in err   # tqdm's bar on stderr
    assert len(lines) == 1 and "4 molecule(s)" in lines[0]
    with pytest.raises(ValueError, match="--threads must be >= 1, got 0"):
        predict(run, xyz, threads=0)


def test_calculator_from_a_run_folder_uses_its_domain(tmp_path):
    from ase import Atoms
    from gtkernels.ase_calculator import GTCalculator
    from gtkernels.data.molecules import OutOfDomainWarning
    run = tiny_run(str(tmp_path / "run"))   # domain: the committed QM9 sample's (H, C, N, O, F; ≤ 29 atoms)
    calc = GTCalculator(run)
    assert calc.domain["elements"] == [1, 6, 7, 8, 9] and calc.domain["max_atoms"] == 29
    atoms = _methanol(tiny_energy_model())
    want = atoms.get_potential_energy()
    atoms.calc = calc
    assert atoms.get_potential_energy() == pytest.approx(want, rel=1e-12)
    h2s = Atoms("SH2", positions=[[0, 0, 0], [1.34, 0, 0], [-0.3, 1.3, 0]])
    h2s.calc = calc
    with pytest.warns(OutOfDomainWarning, match="contain S"):
        h2s.get_potential_energy()

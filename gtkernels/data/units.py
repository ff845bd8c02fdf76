"""Units, QM9 target definitions and atom reference energies: the ONE place that holds them.

Targets are stored in the HDF5 cache and reported everywhere in these standard units: μ (D), α (a₀³),
HOMO, LUMO, gap (meV), ⟨R²⟩ (a₀²), ZPVE (meV), U0, U, H, G (meV), Cv (cal/mol·K). qm9pack's CSV stores
energies in Hartree.
"""
from __future__ import annotations

from typing import Dict, NamedTuple

import numpy as np

HARTREE_TO_MEV = 27211.386
MEV_PER_EV = 1000.0


class Target(NamedTuple):
    name: str       # our short name
    column: str     # qm9pack CSV column
    scale: float    # CSV value × scale = value in `unit`
    unit: str
    extensive: bool  # additive over far-apart fragments (augmentation sums it)
    energy: bool     # a potential energy: forces = −∂E/∂pos make sense


TARGETS = (
    Target("mu", "Dipole_debye", 1.0, "D", False, False),
    Target("alpha", "Polarizability_bohr3", 1.0, "a0^3", True, False),
    Target("homo", "HOMO_au", HARTREE_TO_MEV, "meV", False, False),
    Target("lumo", "LUMO_au", HARTREE_TO_MEV, "meV", False, False),
    Target("gap", "HOMO_LUMO_gap_au", HARTREE_TO_MEV, "meV", False, False),
    Target("r2", "R2_bohr2", 1.0, "a0^2", False, False),
    Target("zpve", "ZPVE_au", HARTREE_TO_MEV, "meV", True, False),
    Target("U0", "InternalEnergy_0K_au", HARTREE_TO_MEV, "meV", True, True),
    Target("U", "InternalEnergy_298K_au", HARTREE_TO_MEV, "meV", True, True),
    Target("H", "Enthalphy_298K_au", HARTREE_TO_MEV, "meV", True, True),
    Target("G", "GibbsFreeEnergy_298K_au", HARTREE_TO_MEV, "meV", True, True),
    Target("Cv", "Heatcapacity_Cv_cal_mol_K", 1.0, "cal/mol/K", True, False),
)
TARGET_NAMES = tuple(t.name for t in TARGETS)
BY_NAME: Dict[str, Target] = {t.name: t for t in TARGETS}

#: QM9's atomref table (Hartree for energies, cal/mol·K for Cv), per element H, C, N, O, F.
_ATOMREF_RAW = {
    "U0": (-0.500273, -37.846772, -54.583861, -75.064579, -99.718730),
    "U": (-0.498857, -37.845355, -54.582445, -75.063163, -99.717314),
    "H": (-0.497912, -37.844411, -54.581501, -75.062219, -99.716370),
    "G": (-0.510927, -37.861317, -54.598897, -75.079532, -99.733544),
    "Cv": (2.981,) * 5,
    "zpve": (0.0,) * 5,
}
ATOMREF_Z = (1, 6, 7, 8, 9)
#: Elements QM9 contains (what a QM9-trained model may be asked about).
QM9_ELEMENTS = frozenset(ATOMREF_Z)


#: schnetpack v1 (the data layer of the paper's official code, GitHub yoniLc/GeometricTransformerMolecule) stores
#: QM9 in ASE units: it multiplies the raw values by ``ase.units`` Debye, Bohr³, Hartree (→ eV), Bohr², so μ is
#: in e·Å, α in Å³, every energy (HOMO, LUMO, gap, ZPVE, U0, U, H, G) in eV, ⟨R²⟩ in Å², Cv in cal/mol·K; its
#: atomref table holds eV (and cal/mol·K for Cv). ASE's constants (CODATA 2014, as ``ase.units``):
ASE_DEBYE = 0.20819433442462576     # e·Å per debye
ASE_BOHR = 0.5291772105638411       # Å per bohr
#: ``target name → (schnetpack v1 unit, factor)``: a value in schnetpack v1's unit × factor = the value in ours.
SCHNETPACK_V1 = {
    "mu": ("e*Angstrom", 1.0 / ASE_DEBYE),
    "alpha": ("Angstrom^3", 1.0 / ASE_BOHR**3),
    "homo": ("eV", MEV_PER_EV), "lumo": ("eV", MEV_PER_EV), "gap": ("eV", MEV_PER_EV),
    "r2": ("Angstrom^2", 1.0 / ASE_BOHR**2),
    "zpve": ("eV", MEV_PER_EV), "U0": ("eV", MEV_PER_EV), "U": ("eV", MEV_PER_EV), "H": ("eV", MEV_PER_EV),
    "G": ("eV", MEV_PER_EV),
    "Cv": ("cal/mol/K", 1.0),
}


def target(name: str) -> Target:
    if name not in BY_NAME:
        raise ValueError(f"unknown target {name!r}; choose one of {', '.join(TARGET_NAMES)}")
    return BY_NAME[name]


def atomref(name: str, max_z: int = 50) -> np.ndarray:
    """float64 ``[max_z]`` atom reference of target ``name`` in its standard unit (zeros where QM9 has none)."""
    t = target(name)
    out = np.zeros(max_z, dtype=np.float64)
    if name in _ATOMREF_RAW:
        for z, v in zip(ATOMREF_Z, _ATOMREF_RAW[name]):
            out[z] = v * t.scale
    return out

"""R-MAT's featuriser with RDKit: the released ``featurization_rmat*.py`` of gmum/huggingmolecules, in this
project's compact layout (docs/semantics.md §6.2, §7).

One molecule becomes an :class:`RMATMolecule` of n = heavy atoms + 1 rows (the dummy node first):

``features [n, 37]`` uint8   the released node features: column 0 the mask flag (always 0), column 1 the dummy
                             flag (1 on row 0 only), columns 2–36 the atom features of ``get_atom_features``:
                             element one-hot (B, C, N, O, F, P, S, Cl, Br, I, other), heavy-neighbour count 0–5
                             (more: the last slot), total H count 0–4 (more: the last slot), formal charge −5…5
                             (outside: the last slot), in ring, aromatic; all 0 on the dummy row but the flag
``pos [n, 3]`` float64       conformer positions in Å (row 0, the dummy node, is 0: it has no position)
``graph_code [n·n]`` int16   the per-pair code of :mod:`gtkernels.ops.relation_code` (bond channels and hop
                             bucket), row-major; the dummy node: no bond, hop "no path" to the others, 0 to itself

What differs from the released code, none of it in the features of a given conformer:

- shortest paths from RDKit's ``GetDistanceMatrix`` (a C++ BFS), not a Python Floyd–Warshall (same counts:
  every path of a molecular graph has unit edges; disconnected fragments get "no path", the released 999);
- the conformer is seeded (``seed``, default 0), so featurising twice gives the same positions; the released
  ``EmbedMolecule(mol, maxAttempts=5000)`` is unseeded. The procedure is the same: hydrogens added, embedding,
  UFF (``UFFOptimizeMolecule``), hydrogens removed; where embedding fails, RDKit's 2D coordinates of the
  SMILES' molecule (``embedded`` False), as the released fallback;
- a SMILES RDKit cannot parse, or a molecule without heavy atoms, raises :class:`FeaturisationError` naming it
  (the released code crashes inside RDKit); dataset builders count and log such molecules, never drop them
  silently.

RDKit is needed only here (``pip install 'gtkernels[rmat]'``); the model and the cache readers do not import it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..ops.relation_code import encode_graph_relation

#: Width of the released node features (``RMatConfig.d_atom``).
ATOM_FEATURES = 37
#: Column of the mask flag (0 everywhere in the released featuriser) and of the dummy-node flag.
MASK_FEATURE, DUMMY_FEATURE = 0, 1
#: The released one-hot choices of ``get_atom_features``; a value outside a list sets its last slot.
ELEMENTS = (5, 6, 7, 8, 9, 15, 16, 17, 35, 53, 999)
DEGREES = (0, 1, 2, 3, 4, 5)
HYDROGENS = (0, 1, 2, 3, 4)
CHARGES = (-5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5)
#: ``GetBondTypeAsDouble`` values of the bond-type one-hot (single, aromatic, double, triple); any other value
#: sets the last slot, triple, as the released ``one_hot_vector`` does.
BOND_ORDERS = (1.0, 1.5, 2.0, 3.0)
#: ``EmbedMolecule``'s attempts, as released.
EMBED_ATTEMPTS = 5000
#: Å: a conformer with two heavy atoms closer than this (ETKDG puts one-atom fragments of a salt, e.g. Na⁺ and
#: Cl⁻, on top of each other) is embedded again from random coordinates, then given 2D coordinates.
MIN_SEPARATION = 0.5


class FeaturisationError(ValueError):
    """A molecule the featuriser cannot use (unparsable SMILES, no heavy atoms); the message names it."""


@dataclass
class RMATMolecule:
    """One featurised molecule (layout in the module docstring); ``embedded``: False for 2D coordinates."""
    features: np.ndarray
    pos: np.ndarray
    graph_code: np.ndarray
    embedded: bool

    @property
    def n_atoms(self) -> int:
        """Rows, the dummy node included."""
        return int(self.features.shape[0])


def _chem():
    try:
        from rdkit import Chem
        from rdkit.Chem import AllChem
    except ImportError as exc:
        raise ModuleNotFoundError("R-MAT featurisation needs RDKit: pip install 'gtkernels[rmat]' "
                                  "(or pip install rdkit)") from exc
    return Chem, AllChem


def _one_hot(value, choices: Sequence) -> List[int]:
    """The released ``one_hot_vector``: 1 at ``choices.index(value)``, at the last slot for any other value."""
    out = [0] * len(choices)
    out[choices.index(value) if value in choices else -1] = 1
    return out


def atom_features(mol) -> np.ndarray:
    """``[heavy atoms, 35]`` uint8: the released ``get_atom_features`` of every atom of ``mol``."""
    rows = []
    for atom in mol.GetAtoms():
        rows.append(_one_hot(atom.GetAtomicNum(), ELEMENTS) + _one_hot(len(atom.GetNeighbors()), DEGREES)
                    + _one_hot(atom.GetTotalNumHs(), HYDROGENS) + _one_hot(atom.GetFormalCharge(), CHARGES)
                    + [int(atom.IsInRing()), int(atom.GetIsAromatic())])
    return np.array(rows, dtype=np.uint8).reshape(-1, ATOM_FEATURES - 2)


def bond_channels(mol) -> np.ndarray:
    """``[n, n, 8]`` int64 released bond channels of ``mol``'s atoms: 0 the mask flag (0), 1–4 the bond-type
    one-hot of ``BOND_ORDERS`` (other orders: triple), 5 aromatic, 6 conjugated, 7 in ring; 0 where unbonded."""
    n = mol.GetNumAtoms()
    out = np.zeros((n, n, 8), dtype=np.int64)
    for bond in mol.GetBonds():
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        row = [0] + _one_hot(bond.GetBondTypeAsDouble(), BOND_ORDERS)
        row += [int(bond.GetIsAromatic()), int(bond.GetIsConjugated()), int(bond.IsInRing())]
        out[i, j] = out[j, i] = row
    return out


def hop_counts(mol) -> np.ndarray:
    """``[n, n]`` int64 shortest-path lengths in bonds, −1 between disconnected fragments (RDKit says 1e8)."""
    Chem, _ = _chem()
    hops = Chem.GetDistanceMatrix(mol)
    return np.where(hops > 1e6, -1, np.rint(hops)).astype(np.int64)


def _separated(mol) -> bool:
    """No two atoms of ``mol``'s conformer closer than ``MIN_SEPARATION``."""
    xyz = mol.GetConformer().GetPositions()
    if len(xyz) < 2:
        return True
    gaps = np.linalg.norm(xyz[:, None] - xyz[None, :], axis=-1) + np.eye(len(xyz)) * 1e9
    return bool(gaps.min() >= MIN_SEPARATION)


def conformer(mol, seed: int = 0) -> Tuple[object, bool]:
    """``(heavy-atom copy of mol with one conformer, embedded?)``: hydrogens added, ``EmbedMolecule`` (seeded,
    ``EMBED_ATTEMPTS`` attempts), ``UFFOptimizeMolecule``, hydrogens removed; RDKit 2D coordinates of the
    heavy-atom molecule where embedding fails (the released fallback). A conformer with atoms on top of each
    other (see ``MIN_SEPARATION``) is embedded once more from random coordinates, then falls back to 2D (the
    released code keeps it, with distances of 0 Å that the op's checks reject)."""
    Chem, AllChem = _chem()
    heavy = Chem.RemoveHs(mol)
    heavy.RemoveAllConformers()
    for random_coords in (False, True):
        full = Chem.AddHs(heavy)
        if AllChem.EmbedMolecule(full, maxAttempts=EMBED_ATTEMPTS, randomSeed=seed,
                                 useRandomCoords=random_coords) != 0:
            break
        AllChem.UFFOptimizeMolecule(full)
        full = Chem.RemoveHs(full)
        if _separated(full):
            return full, True
    AllChem.Compute2DCoords(heavy)
    return heavy, False


def featurise_mol(mol, embedded: bool = True, name: str = "molecule") -> RMATMolecule:
    """:class:`RMATMolecule` of an RDKit molecule whose conformer holds the positions to use (heavy atoms only:
    call :func:`conformer` first, or pass a molecule with its own 3D coordinates, e.g. DFT geometries)."""
    n = mol.GetNumAtoms()
    if n == 0:
        raise FeaturisationError(f"{name} has no heavy atoms")
    if mol.GetNumConformers() == 0:
        raise FeaturisationError(f"{name} has no conformer (call gtkernels.data.rmat_features.conformer first)")
    if any(a.GetAtomicNum() == 1 for a in mol.GetAtoms()):
        raise FeaturisationError(f"{name} holds explicit hydrogens; R-MAT's atoms are the heavy atoms "
                                 f"(Chem.RemoveHs)")
    features = np.zeros((n + 1, ATOM_FEATURES), dtype=np.uint8)
    features[0, DUMMY_FEATURE] = 1
    features[1:, 2:] = atom_features(mol)
    hops = np.full((n + 1, n + 1), -1, dtype=np.int64)
    hops[0, 0] = 0
    hops[1:, 1:] = hop_counts(mol)
    bonds = np.zeros((n + 1, n + 1, 8), dtype=np.int64)
    bonds[1:, 1:] = bond_channels(mol)
    code = encode_graph_relation(torch.from_numpy(bonds), torch.from_numpy(hops)).numpy().reshape(-1)
    pos = np.zeros((n + 1, 3), dtype=np.float64)
    pos[1:] = mol.GetConformer().GetPositions()
    return RMATMolecule(features, pos, code, bool(embedded))


def mol_from_smiles(smiles: str, name: Optional[str] = None):
    """RDKit molecule of ``smiles``; :class:`FeaturisationError` naming it when RDKit cannot parse it."""
    Chem, _ = _chem()
    if not isinstance(smiles, str) or not smiles.strip():
        raise FeaturisationError(f"{name or 'SMILES'} is empty")
    mol = Chem.MolFromSmiles(smiles.strip())
    if mol is None:
        raise FeaturisationError(f"{name or 'SMILES'} {smiles!r} is not a SMILES RDKit can parse")
    return mol


def featurise_smiles(smiles: str, seed: int = 0, name: Optional[str] = None) -> RMATMolecule:
    """:class:`RMATMolecule` of a SMILES with one seeded ETKDG + UFF conformer (2D where embedding fails)."""
    label = name or f"SMILES {smiles!r}"
    mol = mol_from_smiles(smiles, name)
    if mol.GetNumHeavyAtoms() == 0:
        raise FeaturisationError(f"{label} has no heavy atoms")
    mol, embedded = conformer(mol, seed)
    return featurise_mol(mol, embedded, label)


def mol_from_xyz(z: Sequence[int], pos: np.ndarray, name: str = "molecule"):
    """RDKit molecule of atoms ``z [n]`` at ``pos [n, 3]`` Å (hydrogens included), its bonds and bond orders
    perceived from the geometry (``rdDetermineBonds.DetermineBonds``, neutral molecule); the heavy atoms keep
    their given coordinates. :class:`FeaturisationError` naming it when RDKit cannot assign the bonds."""
    Chem, _ = _chem()
    from rdkit.Chem import rdDetermineBonds
    from .elements import symbol
    lines = [f"{symbol(int(a))} {x:.10f} {y:.10f} {w:.10f}" for a, (x, y, w) in zip(z, np.asarray(pos, float))]
    mol = Chem.MolFromXYZBlock(f"{len(lines)}\n{name}\n" + "\n".join(lines) + "\n")
    if mol is None:
        raise FeaturisationError(f"{name}: RDKit could not read its atoms")
    try:
        rdDetermineBonds.DetermineBonds(mol, charge=0)
    except (ValueError, RuntimeError) as exc:
        raise FeaturisationError(f"{name}: RDKit could not assign bonds to its geometry ({exc})") from None
    return Chem.RemoveAllHs(mol)   # every H (RemoveHs keeps some, e.g. on charged atoms); H counts stay on atoms


def featurise_record(mol, seed: int = 0, name: str = "molecule", use_coordinates: bool = True) -> RMATMolecule:
    """:class:`RMATMolecule` of an RDKit molecule from a file (SDF record): its own coordinates when it has a
    3D conformer and ``use_coordinates``, else a conformer made as for a SMILES."""
    Chem, _ = _chem()
    if mol is None:
        raise FeaturisationError(f"{name} could not be read by RDKit")
    if mol.GetNumConformers() and mol.GetConformer().Is3D() and use_coordinates:
        heavy = Chem.RemoveHs(mol)
        return featurise_mol(heavy, True, name)
    if mol.GetNumHeavyAtoms() == 0:
        raise FeaturisationError(f"{name} has no heavy atoms")
    heavy, embedded = conformer(mol, seed)
    return featurise_mol(heavy, embedded, name)

"""Users' own molecules: extended XYZ files (read with ASE) or arrays, as :class:`Molecule` lists; and the check
that they lie in the domain a model was trained on (:func:`check_domain`).

Errors are :class:`MoleculeFileError` (a ``ValueError``) naming the file, the molecule (counted from 1) and the
line, and saying what to fix. Out-of-domain input (elements, sizes or distances the training set did not
have) is predicted, with one :class:`OutOfDomainWarning` per kind of problem per call (``warnings.warn``;
silence it with ``warnings.simplefilter("ignore", OutOfDomainWarning)``). Periodic input is an error: the
model has no periodic images.
"""
from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Sequence

import numpy as np

from .elements import ATOMIC_NUMBERS, SYMBOLS, symbol, symbols
from .qm9pack_csv import Molecule

#: Closest two atoms may be (Å) before a molecule counts as holding a duplicated atom (as the model's check).
from ..ops.validation import MIN_DISTANCE  # noqa: E402


class MoleculeFileError(ValueError):
    """A molecule file that cannot be read; the message names the file and the line."""


class OutOfDomainWarning(UserWarning):
    """Input unlike the model's training data (elements, molecule sizes, interatomic distances): extrapolation."""


# ------------------------------------------------------------------------------------------------ XYZ files
def _check_xyz(path: str) -> List[int]:
    """Structural check of an (extended) XYZ file, so errors name the file and line (ASE's do not).

    Returns the 1-based line number of each molecule's atom-count line.
    """
    try:
        with open(path) as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise MoleculeFileError(f"{path}: cannot read ({exc})") from exc
    i, starts = 0, []
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        mol = f"(molecule {len(starts) + 1})"
        try:
            n = int(lines[i].split()[0])
            if n < 1 or len(lines[i].split()) != 1:
                raise ValueError
        except ValueError:
            raise MoleculeFileError(f"{path}, line {i + 1} {mol}: expected the number of atoms, "
                                    f"got {lines[i]!r}") from None
        for k in range(n):
            ln = i + 2 + k
            if ln >= len(lines):
                raise MoleculeFileError(f"{path}, line {ln + 1} {mol}: file ends after {k} of {n} atoms")
            parts = lines[ln].split()
            if len(parts) < 4:
                raise MoleculeFileError(f"{path}, line {ln + 1} {mol}: expected 'symbol x y z', got {lines[ln]!r}")
            sym = parts[0]
            if sym.isdigit():
                hint = f" (write {SYMBOLS[int(sym)]!r} for Z={int(sym)})" if int(sym) in SYMBOLS else ""
                raise MoleculeFileError(f"{path}, line {ln + 1} {mol}: the element must be a symbol such as 'C', "
                                        f"got the number {sym!r}{hint}")
            if sym == "X":
                raise MoleculeFileError(f"{path}, line {ln + 1} {mol}: 'X' is ASE's dummy atom, not an element; "
                                        "write the element's symbol or delete the line (and lower the atom count)")
            if sym not in ATOMIC_NUMBERS:
                raise MoleculeFileError(f"{path}, line {ln + 1} {mol}: unknown element {sym!r} "
                                        "(symbols are case-sensitive, e.g. 'Cl')")
            try:
                xyz = [float(x) for x in parts[1:4]]
            except ValueError:
                raise MoleculeFileError(f"{path}, line {ln + 1} {mol}: coordinates are not numbers: "
                                        f"{lines[ln]!r}") from None
            if not all(np.isfinite(xyz)):
                raise MoleculeFileError(f"{path}, line {ln + 1} {mol}: coordinates must be finite numbers (Å), got "
                                        f"{' '.join(parts[1:4])}")
        starts.append(i + 1)
        i += 2 + n
    if not starts:
        raise MoleculeFileError(f"{path}, line 1: no molecule found (empty file)")
    return starts


def read_xyz(path: str) -> List[Molecule]:
    """All molecules of an (extended) XYZ file, via ``ase.io.read``; positions in Å (float64).

    Raises :class:`MoleculeFileError` for unreadable files, numbers or ``X`` in place of element symbols,
    non-finite coordinates, duplicated atoms (closer than 1e-3 Å) and periodic frames (``pbc`` set, e.g. by a
    ``Lattice`` on the comment line).
    """
    import ase.io
    starts = _check_xyz(path)
    try:
        frames = ase.io.read(path, index=":", format="extxyz")
    except Exception as exc:  # ASE's own parser rejected something our check let through
        raise MoleculeFileError(f"{path}: {exc}") from exc
    out = []
    for k, a in enumerate(frames):
        line = starts[k] if len(starts) == len(frames) else None
        where = f"{path}, molecule {k + 1}" + (f" (line {line})" if line else "")
        if np.any(a.pbc):
            raise MoleculeFileError(
                f"{where}: periodic (pbc={[bool(p) for p in a.pbc]}); the model has no periodic images, so it "
                "cannot predict a crystal or a periodic cell. Remove Lattice= and pbc= from the comment line "
                "(or write pbc=\"F F F\") to predict the atoms as one finite molecule")
        out.append(_checked(a.numbers, a.positions, where, first_atom_line=line + 2 if line else None))
    return out


def _checked(z, pos, where: str, first_atom_line: Optional[int] = None) -> Molecule:
    """``Molecule`` of ``z``, ``pos`` after the value checks (finite, no duplicated atoms); errors start with
    ``where``."""
    z = np.asarray(z)
    pos = np.asarray(pos, dtype=np.float64)
    if z.ndim != 1 or pos.shape != (len(z), 3):
        raise ValueError(f"{where}: z must be [n] and pos [n, 3], got {z.shape} and {pos.shape}")
    if len(z) == 0:
        raise ValueError(f"{where}: no atoms")
    if z.min() < 1 or z.max() > max(SYMBOLS):
        bad = int(z[(z < 1) | (z > max(SYMBOLS))][0])
        raise ValueError(f"{where}: atomic numbers must be elements (1..{max(SYMBOLS)}), got {bad}")

    def at(i: int) -> str:
        return f"atom {i + 1} ({symbol(z[i])}" + (f", line {first_atom_line + i})" if first_atom_line else ")")
    bad = np.nonzero(~np.isfinite(pos).all(1))[0]
    if len(bad):
        raise ValueError(f"{where}: {at(bad[0])} has non-finite coordinates {pos[bad[0]].tolist()}; give finite "
                         "positions in Å")
    i, j, d = _closest_pair(pos)
    if d < MIN_DISTANCE:
        raise ValueError(f"{where}: {at(i)} and {at(j)} are {d:.3g} Å apart (< {MIN_DISTANCE} Å): the same atom "
                         f"twice or collapsed coordinates; delete the duplicate or correct its position")
    return Molecule(-1, z.astype(np.uint8), pos)


def _closest_pair(pos: np.ndarray):
    """``(i, j, distance)`` of the closest two atoms of ``pos [n, 3]`` (``inf`` for n < 2)."""
    n = len(pos)
    if n < 2:
        return 0, 0, float("inf")
    d = np.sqrt(((pos[:, None, :] - pos[None, :, :]) ** 2).sum(-1))
    d[np.arange(n), np.arange(n)] = np.inf
    i, j = np.unravel_index(int(np.argmin(d)), d.shape)
    return int(min(i, j)), int(max(i, j)), float(d[i, j])


def from_arrays(z: Sequence[int], pos, index: int = -1) -> Molecule:
    """A molecule from atomic numbers ``z [n]`` and positions ``pos [n, 3]`` in Å (finite, atoms ≥ 1e-3 Å apart)."""
    m = _checked(z, pos, "from_arrays")
    return Molecule(index, m.z, m.pos)


# -------------------------------------------------------------------------------------------- training domain
def training_domain(ds, idx: Optional[np.ndarray] = None) -> Dict[str, object]:
    """What a model trained on molecules ``idx`` of ``ds`` has seen (a JSON-able dict, stored in ``config.json``).

    ``ds``: a :class:`~gtkernels.data.QM9` (or anything with ``z [T]``, ``pos [T, 3]``, ``offsets [M+1]``,
    ``n_atoms [M]``). Returns ``{"elements": sorted atomic numbers, "max_atoms": the largest molecule,
    "min_distance": the closest pair of atoms of any molecule (Å)}``. Augmented merges are not counted.
    """
    idx = np.arange(len(ds.n_atoms)) if idx is None else np.asarray(idx, dtype=np.int64)
    sizes = ds.n_atoms[idx]
    if len(idx) == 0:
        return {"elements": [], "max_atoms": 0, "min_distance": None}
    starts = ds.offsets[idx]
    atom = np.repeat(starts - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes) + np.arange(int(sizes.sum()))
    elements = sorted(int(z) for z in np.unique(ds.z[atom]))
    best = np.inf
    for n in np.unique(sizes):
        if n < 2:
            continue
        sel = starts[sizes == n]
        iu = np.triu_indices(n, 1)
        for c in range(0, len(sel), 2048):   # ≤ 2048 molecules at a time: ≤ 10 MB of differences at n = 29
            p = ds.pos[sel[c:c + 2048, None] + np.arange(n)].astype(np.float64)   # [m, n, 3]
            diff = p[:, iu[0]] - p[:, iu[1]]                                      # [m, n(n-1)/2, 3]
            best = min(best, float(np.einsum("mpk,mpk->mp", diff, diff).min()))
    return {"elements": elements, "max_atoms": int(sizes.max()),
            "min_distance": float(np.sqrt(best)) if np.isfinite(best) else None}


def default_domain() -> Dict[str, object]:
    """The domain of a QM9 model whose run did not record one: QM9's elements and largest molecule; no
    distance check (the closest training pair is unknown)."""
    from .qm9 import MAX_ATOMS
    from .units import QM9_ELEMENTS
    return {"elements": sorted(QM9_ELEMENTS), "max_atoms": MAX_ATOMS, "min_distance": None}


def _numbers(ks: Sequence[int], limit: int = 8) -> str:
    shown = ", ".join(str(k + 1) for k in ks[:limit])
    return shown + (f", ... ({len(ks)} in all)" if len(ks) > limit else "")


def check_domain(molecules: Sequence[Molecule], domain: Optional[dict], source: str = "input",
                 max_z: Optional[int] = None) -> List[str]:
    """Compare ``molecules`` with a model's training ``domain`` (:func:`training_domain`; None: :func:`default_domain`).

    Raises ``ValueError`` for elements beyond the model's embedding (``max_z``: Z ≥ max_z cannot be looked up).
    Emits at most one :class:`OutOfDomainWarning` per kind (elements not in training, molecules larger than any
    training molecule, atoms closer than any training pair), naming the molecules (counted from 1) and by how
    much; returns the warnings' messages. ``source`` names the input in messages (a file name, "the Atoms").
    """
    domain = default_domain() if domain is None else domain
    if max_z is not None:
        for k, m in enumerate(molecules):
            if len(m.z) and int(m.z.max()) >= max_z:
                beyond = [z for z in m.z if z >= max_z]
                raise ValueError(f"{source}, molecule {k + 1}: contains {symbols(beyond)}, beyond what the model's "
                                 f"embedding covers (atomic numbers below {max_z}); it cannot be predicted")
    messages = []
    seen = {int(z) for z in domain.get("elements") or ()}
    if seen:
        odd = [k for k, m in enumerate(molecules) if not {int(z) for z in m.z} <= seen]
        if odd:
            new = set().union(*({int(z) for z in molecules[k].z} - seen for k in odd))
            messages.append(
                f"{source}: {len(odd)} of {len(molecules)} molecule(s) ({_numbers(odd)}) contain {symbols(new)}, "
                f"which the training data did not have (it had {symbols(seen)}): the model never learnt them (and has "
                "no atom reference for them), so these predictions are extrapolations, likely meaningless")
    max_atoms = domain.get("max_atoms")
    if max_atoms:
        big = [k for k, m in enumerate(molecules) if len(m.z) > max_atoms]
        if big:
            n = max(len(molecules[k].z) for k in big)
            messages.append(f"{source}: {len(big)} molecule(s) ({_numbers(big)}) are larger than any training "
                            f"molecule: up to {n} atoms vs at most {max_atoms} in training ({n / max_atoms:.3g}x)")
    dmin = domain.get("min_distance")
    if dmin:
        close = []
        for k, m in enumerate(molecules):
            i, j, d = _closest_pair(m.pos)
            if d < dmin:
                close.append((d, k, i, j))
        if close:
            d, k, i, j = min(close)
            messages.append(
                f"{source}: {len(close)} molecule(s) ({_numbers(sorted(c[1] for c in close))}) have atoms closer than "
                f"any pair in the training data: down to {d:.4g} Å (atoms {i + 1} and {j + 1} of molecule {k + 1}) "
                f"vs {dmin:.4g} Å in training")
    for msg in messages:
        warnings.warn(msg, OutOfDomainWarning, stacklevel=3)
    return messages

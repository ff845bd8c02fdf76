"""Users' own molecules: extended XYZ files (read with ASE) or arrays, as :class:`Molecule` lists."""
from __future__ import annotations

from typing import List, Sequence

import numpy as np

from .qm9pack_csv import Molecule


class MoleculeFileError(ValueError):
    """A molecule file that cannot be read; the message names the file and the line."""


def _check_xyz(path: str) -> None:
    """Structural check of an (extended) XYZ file, so errors name the file and line (ASE's do not)."""
    from ase.data import atomic_numbers
    try:
        with open(path) as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise MoleculeFileError(f"{path}: cannot read ({exc})") from exc
    i, frames = 0, 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        try:
            n = int(lines[i].split()[0])
            if n < 1 or len(lines[i].split()) != 1:
                raise ValueError
        except ValueError:
            raise MoleculeFileError(f"{path}, line {i + 1}: expected the number of atoms, got {lines[i]!r}") from None
        for k in range(n):
            ln = i + 2 + k
            if ln >= len(lines):
                raise MoleculeFileError(f"{path}, line {ln + 1}: file ends after {k} of {n} atoms")
            parts = lines[ln].split()
            if len(parts) < 4:
                raise MoleculeFileError(f"{path}, line {ln + 1}: expected 'symbol x y z', got {lines[ln]!r}")
            sym = parts[0]
            if sym not in atomic_numbers and not sym.isdigit():
                raise MoleculeFileError(f"{path}, line {ln + 1}: unknown element {sym!r}")
            try:
                [float(x) for x in parts[1:4]]
            except ValueError:
                raise MoleculeFileError(f"{path}, line {ln + 1}: coordinates are not numbers: {lines[ln]!r}") from None
        i += 2 + n
        frames += 1
    if frames == 0:
        raise MoleculeFileError(f"{path}, line 1: no molecule found (empty file)")


def read_xyz(path: str) -> List[Molecule]:
    """All molecules of an (extended) XYZ file, via ``ase.io.read``; positions in Å (float64)."""
    import ase.io
    _check_xyz(path)
    try:
        frames = ase.io.read(path, index=":", format="extxyz")
    except Exception as exc:  # ASE's own parser rejected something our check let through
        raise MoleculeFileError(f"{path}: {exc}") from exc
    return [from_arrays(a.numbers, a.positions, index=-1) for a in frames]


def from_arrays(z: Sequence[int], pos, index: int = -1) -> Molecule:
    """A molecule from atomic numbers ``z [n]`` and positions ``pos [n, 3]`` in Å."""
    z = np.asarray(z)
    pos = np.asarray(pos, dtype=np.float64)
    if z.ndim != 1 or pos.shape != (len(z), 3):
        raise ValueError(f"z must be [n] and pos [n, 3], got {z.shape} and {pos.shape}")
    if len(z) and (z.min() < 1 or z.max() > 255):
        raise ValueError(f"atomic numbers must be in 1..255, got {z.min()}..{z.max()}")
    return Molecule(index, z.astype(np.uint8), pos)

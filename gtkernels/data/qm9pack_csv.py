"""Read molecules straight from the CSV files shipped by the PyPI package ``qm9pack``.

The package's own import needs ``pkg_resources``; we only locate its data folder and parse the CSV ourselves.
Coordinates are in Å, energies in Hartree (as stored). The HDF5-cached dataset builds on this.
"""
from __future__ import annotations

import csv
import importlib.util
import os
from typing import Iterator, List, NamedTuple

import numpy as np

from .elements import ATOMIC_NUMBERS

CSV_PARTS = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")


class Molecule(NamedTuple):
    """One molecule: ``z`` uint8 ``[n]`` atomic numbers, ``pos`` float64 ``[n, 3]`` in Å, its QM9 index."""
    index: int
    z: np.ndarray
    pos: np.ndarray


def qm9pack_data_dir() -> str:
    """Folder holding qm9pack's CSV files; a clear error when the package is not installed."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the QM9 data ships in the PyPI package 'qm9pack': pip install qm9pack")
    return os.path.join(list(spec.submodule_search_locations)[0], "data")


def _parse_coordinates(text: str) -> np.ndarray:
    """``"[[x,y,z],...]"`` → float64 ``[n, 3]``; QM9 writes numbers like ``1.`` and Mathematica's ``1.5*^-6``."""
    numbers = text.replace("[", " ").replace("]", " ").replace("*^", "e").split(",")
    return np.array([float(x) for x in numbers], dtype=np.float64).reshape(-1, 3)


def iter_molecules(limit: int | None = None) -> Iterator[Molecule]:
    """Yield molecules in QM9 order (index 1, 2, ...), at most ``limit`` of them."""
    csv.field_size_limit(1 << 24)
    count = 0
    for part in CSV_PARTS:
        with open(os.path.join(qm9pack_data_dir(), part), newline="") as fh:
            for row in csv.DictReader(fh):
                if limit is not None and count >= limit:
                    return
                z = np.array([ATOMIC_NUMBERS[s.strip("'\" ")] for s in row["Elements"].strip("[]").split(",")],
                             dtype=np.uint8)
                pos = _parse_coordinates(row["XYZ_Ang"])
                yield Molecule(int(row["Index"]), z, pos)
                count += 1


def load_molecules(limit: int) -> List[Molecule]:
    """The first ``limit`` QM9 molecules."""
    return list(iter_molecules(limit))


def sample_molecules(count: int, seed: int = 0) -> List[Molecule]:
    """``count`` molecules drawn uniformly from all of QM9 (reads every CSV row: a few seconds)."""
    everything = list(iter_molecules())
    picks = np.random.default_rng(seed).choice(len(everything), size=count, replace=False)
    return [everything[i] for i in sorted(picks)]

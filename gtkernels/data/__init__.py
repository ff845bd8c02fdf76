"""Molecule data: QM9 from the ``qm9pack`` package, and batching helpers."""
from .batching import pack, pad
from .qm9pack_csv import Molecule, iter_molecules, load_molecules, sample_molecules

__all__ = ["Molecule", "iter_molecules", "load_molecules", "sample_molecules", "pad", "pack"]

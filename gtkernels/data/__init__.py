"""Molecule data: QM9 (HDF5 cache of the ``qm9pack`` CSV), the committed QM9 sample (no qm9pack needed), users'
molecules, batching and augmentation; R-MAT's featurised sets (:mod:`.rmat_data`; the RDKit featuriser is
:mod:`.rmat_features`, imported on use)."""
from .augment import merge_pairs
from .batching import (batch_vector, cu_seqlens_from_batch, make_batches, pack, packed_to_padded, pad,
                       padding_overhead)
from .molecules import MoleculeFileError, from_arrays, read_xyz
from .qm9 import QM9, cache_dir, load_split, make_split, save_split, train_subset
from .qm9_sample import QM9Sample, qm9_sample
from .qm9pack_csv import Molecule, iter_molecules, load_molecules, sample_molecules
from .rmat_data import PackedMolecules, RMATDataset, random_split, rmat_sample

__all__ = ["Molecule", "iter_molecules", "load_molecules", "sample_molecules", "pad", "pack", "batch_vector",
           "cu_seqlens_from_batch", "make_batches", "packed_to_padded", "padding_overhead", "QM9", "cache_dir",
           "make_split", "train_subset",
           "save_split", "load_split", "merge_pairs", "read_xyz", "from_arrays", "MoleculeFileError", "QM9Sample",
           "qm9_sample", "RMATDataset", "PackedMolecules", "rmat_sample", "random_split"]

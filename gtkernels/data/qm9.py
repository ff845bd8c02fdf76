"""QM9 as an HDF5 cache built once from qm9pack's CSV files, plus reproducible splits.

>>> ds = QM9()                      # builds ~/.cache/gtkernels/qm9_v1.h5 on first use (progress bar)
>>> len(ds), ds.targets("U0")[:3]   # 130831, energies in meV
>>> split = make_split(len(ds), seed=0)  # {'train': 110000 indices, 'val': 10000, 'test': rest}

Layout of the cache (datasets): ``z`` uint8 ``[T]``, ``pos`` float32 ``[T, 3]`` (Å), ``offsets`` int64 ``[M+1]``,
``index`` int64 ``[M]`` (QM9 index), ``targets`` float64 ``[M, 12]`` in the units of :mod:`.units`.
Attributes: ``complete`` (written last), ``version``, ``n_molecules``, ``n_atoms``, ``checksum`` (BLAKE2 of the arrays).
A file lacking any of these, with wrong counts or a wrong checksum is rebuilt, never used.
Positions are rounded to multiples of 2⁻³² Å (a no-op except for |x| < 2⁻⁹ Å) so that translating a molecule
by an integer number of Å in float64 is exact (the augmentation relies on it).
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import tempfile
import time
from typing import Dict, Optional, Sequence

import numpy as np

from .elements import ATOMIC_NUMBERS
from .qm9pack_csv import CSV_PARTS, _parse_coordinates, qm9pack_data_dir
from .units import TARGET_NAMES, TARGETS

CACHE_VERSION = 1
QM9_SIZE = 130_831
MAX_ATOMS = 29
_GRID = 2.0 ** 32
log = logging.getLogger(__name__)


def cache_dir(path: Optional[str] = None) -> str:
    """``path``, else ``$GTKERNELS_CACHE``, else ``~/.cache/gtkernels``."""
    return os.path.expanduser(path or os.environ.get("GTKERNELS_CACHE") or os.path.join("~", ".cache", "gtkernels"))


def cache_path(path: Optional[str] = None, limit: Optional[int] = None) -> str:
    name = f"qm9_v{CACHE_VERSION}" + (f"_first{limit}" if limit else "") + ".h5"
    return os.path.join(cache_dir(path), name)


def _checksum(arrays: Sequence[np.ndarray]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        h.update(np.ascontiguousarray(a).view(np.uint8).reshape(-1))
    return h.hexdigest()


def _read_csv(limit: Optional[int], progress: bool):
    from tqdm import tqdm
    csv.field_size_limit(1 << 24)
    total = min(limit, QM9_SIZE) if limit else QM9_SIZE
    zs, poss, idx, tgt = [], [], [], []
    bar = tqdm(total=total, desc="QM9 CSV -> HDF5", unit="mol", disable=not progress, mininterval=0.5)
    cols = [t.column for t in TARGETS]
    scales = np.array([t.scale for t in TARGETS])
    for part in CSV_PARTS:
        with open(os.path.join(qm9pack_data_dir(), part), newline="") as fh:
            for row in csv.DictReader(fh):
                if len(idx) >= total:
                    break
                zs.append(np.array([ATOMIC_NUMBERS[s.strip("'\" ")] for s in row["Elements"].strip("[]").split(",")],
                                   dtype=np.uint8))
                poss.append(_parse_coordinates(row["XYZ_Ang"]))
                idx.append(int(row["Index"]))
                tgt.append([float(row[c].replace("*^", "e")) for c in cols])
                bar.update(1)
    bar.close()
    offsets = np.zeros(len(zs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(z) for z in zs])
    pos = np.round(np.concatenate(poss) * _GRID) / _GRID
    return (np.concatenate(zs), pos.astype(np.float32), offsets, np.array(idx, dtype=np.int64),
            np.array(tgt, dtype=np.float64) * scales)


def _h5py():
    try:
        import h5py
    except ImportError as exc:
        raise ModuleNotFoundError("the QM9 cache is an HDF5 file and needs h5py: pip install 'gtkernels[train]' "
                                  "(or pip install h5py)") from exc
    return h5py


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _damage(path: str) -> Optional[str]:
    """Why the file at ``path`` is not a usable cache, or None when it is (or does not exist)."""
    if not os.path.exists(path):
        return None
    try:
        _load(path, None)
    except (OSError, ValueError, KeyError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def build_cache(path: str, limit: Optional[int] = None, progress: bool = True) -> None:
    """Convert the CSV into ``path`` (written to a temporary file in the same folder, then renamed).

    The file gets the permissions of any new file (0666 less the umask, e.g. 0644), not mkstemp's private 0600:
    the cache is shared data. A damaged file already at ``path`` is replaced, with a warning on the
    ``gtkernels.data.qm9`` logger saying what was wrong with it.
    """
    _h5py()   # before the long conversion: say now when h5py is missing
    if os.path.exists(path):
        why = _damage(path)
        if why is not None:
            log.warning("QM9 cache %s is damaged (%s); rebuilding it from the qm9pack CSV files", path, why)
        else:
            log.warning("QM9 cache %s does not hold the requested molecules; rebuilding it", path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    z, pos, offsets, index, targets = _read_csv(limit, progress)
    write_cache(path, {"z": z, "pos": pos, "offsets": offsets, "index": index, "targets": targets},
                {"target_names": json.dumps(list(TARGET_NAMES)), "version": CACHE_VERSION,
                 "n_molecules": len(index), "n_atoms": len(z)})


def write_cache(path: str, arrays: Dict[str, np.ndarray], attrs: dict) -> None:
    """An HDF5 cache at ``path``, atomically: the ``arrays`` (datasets, in order) and ``attrs``, then the
    BLAKE2 ``checksum`` of the arrays and ``complete`` = True last, into a temporary file in the same folder that
    is renamed over ``path`` (a crash leaves no half-written cache). Permissions of any new file (0666 less the
    umask), not mkstemp's private 0600: a cache is shared data."""
    h5py = _h5py()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".h5.tmp", dir=os.path.dirname(path) or ".")
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            for name, arr in arrays.items():
                f.create_dataset(name, data=arr)
            for key, value in attrs.items():
                f.attrs[key] = value
            f.attrs["checksum"] = _checksum(list(arrays.values()))
            f.attrs["complete"] = True
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _load(path: str, expected: Optional[int]) -> Dict[str, np.ndarray]:
    """The cache's arrays; raises ValueError (or OSError) if it is incomplete, inconsistent or corrupted."""
    h5py = _h5py()
    with h5py.File(path, "r") as f:
        a = dict(f.attrs)
        if not a.get("complete", False) or a.get("version") != CACHE_VERSION:
            raise ValueError("incomplete cache or old version")
        data = {k: f[k][()] for k in ("z", "pos", "offsets", "index", "targets")}
    m, t = int(a["n_molecules"]), int(a["n_atoms"])
    ok = (data["z"].shape == (t,) and data["pos"].shape == (t, 3) and data["offsets"].shape == (m + 1,)
          and data["index"].shape == (m,) and data["targets"].shape == (m, len(TARGET_NAMES))
          and data["offsets"][-1] == t and (expected is None or m == expected))
    if not ok:
        raise ValueError("counts do not match")
    if _checksum([data[k] for k in ("z", "pos", "offsets", "index", "targets")]) != a["checksum"]:
        raise ValueError("checksum mismatch")
    return data


class MoleculeDataset:
    """``torch.utils.data.Dataset`` protocol over packed arrays ``z [T]``, ``pos [T, 3]``, ``offsets [M+1]``,
    ``index [M]``, ``_targets [M, 12]`` (what :class:`QM9` holds).

    ``ds[i]`` (``-len(ds) <= i < len(ds)``, else ``IndexError``) is a dict of tensors, the fields of a PyG
    ``Data`` (``torch_geometric.data.Data(**ds[i])`` makes one): ``z`` int64 ``[n]``, ``pos`` float32 ``[n, 3]``
    (Å), ``y`` float64 ``[12]`` (every target, in :data:`~gtkernels.data.units.TARGET_NAMES` order and its
    standard unit; ``ds.target_names``), ``index`` (the QM9 index, an int). ``ds.molecule(i)`` gives the
    :class:`~gtkernels.data.Molecule` instead. Batch with ``DataLoader(ds, batch_size=32,
    collate_fn=QM9.collate)``: the batch dict goes straight into ``model(batch)``.
    """

    target_names = TARGET_NAMES

    def __getitem__(self, i):
        import torch
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"{type(self).__name__} indices are integers, got {type(i).__name__}; for a subset use "
                            "torch.utils.data.Subset(ds, indices)")
        m = len(self.index)
        if not -m <= i < m:
            raise IndexError(f"molecule {i} out of range for {type(self).__name__} of {m} molecules")
        i = int(i) % m
        a, b = self.offsets[i], self.offsets[i + 1]
        return {"z": torch.from_numpy(self.z[a:b].astype(np.int64)),
                "pos": torch.from_numpy(np.ascontiguousarray(self.pos[a:b], dtype=np.float32)),
                "y": torch.from_numpy(np.array(self._targets[i], dtype=np.float64)),
                "index": int(self.index[i])}

    @staticmethod
    def collate(items):
        """Items of ``ds[i]`` → one packed batch dict: ``z`` int64 ``[T]``, ``pos`` float32 ``[T, 3]``, ``batch``
        int64 ``[T]`` (molecule of each atom, as PyG), ``cu_seqlens`` int32 ``[B+1]``, ``y`` float64 ``[B, 12]``,
        ``index`` int64 ``[B]``, ``num_graphs`` (B)."""
        import torch
        counts = torch.tensor([len(it["z"]) for it in items], dtype=torch.int64)
        cu = torch.zeros(len(items) + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(counts, 0)
        return {"z": torch.cat([it["z"] for it in items]) if items else torch.zeros(0, dtype=torch.int64),
                "pos": torch.cat([it["pos"] for it in items]) if items else torch.zeros(0, 3),
                "batch": torch.repeat_interleave(torch.arange(len(items)), counts),
                "cu_seqlens": cu,
                "y": torch.stack([it["y"] for it in items]) if items else torch.zeros(0, len(TARGET_NAMES),
                                                                                  dtype=torch.float64),
                "index": torch.tensor([it["index"] for it in items], dtype=torch.int64),
                "num_graphs": len(items)}

    def domain(self, idx=None) -> dict:
        """Elements, largest molecule and closest atom pair of molecules ``idx`` (all: None);
        :func:`gtkernels.data.molecules.training_domain`."""
        from .molecules import training_domain
        return training_domain(self, idx)


class QM9(MoleculeDataset):
    """The QM9 dataset (130,831 molecules), from the HDF5 cache (built if missing, rebuilt if damaged).

    A ``torch.utils.data.Dataset``: ``len(ds)``, and ``ds[i]`` a dict of tensors as PyG's ``Data`` fields
    (:class:`MoleculeDataset`).

    Args:
        cache: cache folder (default ``$GTKERNELS_CACHE`` or ``~/.cache/gtkernels``).
        limit: only the first ``limit`` molecules (own cache file; for tests and demos).
        progress: show the conversion progress bar.
    """

    def __init__(self, cache: Optional[str] = None, limit: Optional[int] = None, progress: bool = True,
                 verbose: bool = False):
        self.path = cache_path(cache, limit)
        expected = min(limit, QM9_SIZE) if limit else QM9_SIZE
        t0 = time.perf_counter()
        self.rebuilt = False
        try:
            data = _load(self.path, expected)
        except (OSError, ValueError, KeyError) as exc:
            if os.path.exists(self.path) and verbose:
                print(f"QM9 cache {self.path} is unusable ({exc}); rebuilding it")
            build_cache(self.path, limit, progress)
            data = _load(self.path, expected)
            self.rebuilt = True
        self.load_seconds = time.perf_counter() - t0
        self.z, self.pos, self.offsets = data["z"], data["pos"], data["offsets"]
        self.index, self._targets = data["index"], data["targets"]
        self.n_atoms = np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.index)

    def targets(self, name: str) -> np.ndarray:
        """float64 ``[M]`` values of target ``name`` in its standard unit."""
        from .units import target
        target(name)
        return self._targets[:, TARGET_NAMES.index(name)]

    def molecule(self, i: int):
        """The i-th molecule (0-based) as a :class:`~gtkernels.data.Molecule` (float64 positions)."""
        from .qm9pack_csv import Molecule
        a, b = self.offsets[i], self.offsets[i + 1]
        return Molecule(int(self.index[i]), self.z[a:b], self.pos[a:b].astype(np.float64))


# ---------------------------------------------------------------------------------------------- splits
def make_split(n: int, seed: int = 0, n_train: int = 110_000, n_val: int = 10_000) -> Dict[str, np.ndarray]:
    """Random split of ``range(n)``: ``n_train`` / ``n_val`` / the rest (test), from ``seed``.

    For ``n`` smaller than QM9 (subsets), the sizes scale down proportionally (84 % / 7.6 % / rest).
    """
    if n < n_train + n_val:
        n_train, n_val = int(round(n * 110_000 / QM9_SIZE)), max(1, int(round(n * 10_000 / QM9_SIZE)))
    perm = np.random.default_rng(seed).permutation(n)
    return {"train": np.sort(perm[:n_train]), "val": np.sort(perm[n_train:n_train + n_val]),
            "test": np.sort(perm[n_train + n_val:])}


def train_subset(train: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """A fixed draw of ``n`` of the training indices ``train`` (int64 ``[N]``), sorted; all of them when ``n >= N``.

    The draw depends on ``seed`` and the training set only, so runs of any batch size or package that name the
    same split seed and ``n`` train on the same molecules (``gtkernels train --train-subset``, the peer
    benchmarks).
    """
    train = np.asarray(train, dtype=np.int64)
    if n >= len(train):
        return np.sort(train)
    pick = np.random.default_rng([seed, n]).choice(len(train), size=n, replace=False)
    return np.sort(train[pick])


def save_split(split: Dict[str, np.ndarray], path: str, **meta) -> None:
    """Write the split as JSON (atomically) so a run's test set is never trained on."""
    obj = {k: [int(i) for i in v] for k, v in split.items()}
    obj["meta"] = meta
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh)
    os.replace(tmp, path)


def load_split(path: str) -> Dict[str, np.ndarray]:
    with open(path) as fh:
        obj = json.load(fh)
    return {k: np.asarray(obj[k], dtype=np.int64) for k in ("train", "val", "test")}

"""What ``gtkernels train/evaluate/predict --model rmat`` needs beyond the shared training loop (:mod:`.train`):
the batches of a featurised data set, R-MAT's protocol (MSE loss, RMSE metric, Noam learning-rate schedule,
random 80/10/10 splits) and the reading of SMILES / SDF input for ``predict``.

R-MAT's protocol (huggingmolecules ``experiments/configs``): Adam, MSE loss, ``NoamLRScheduler`` with
``warmup_factor`` 0.2 and ``model_size`` 768, batch 16, 100 epochs, the learning rate chosen on the validation
RMSE from a grid, random splits 80/10/10 over the seeds 1234, 100, 44, 13, 7407, 5357.
"""
from __future__ import annotations

import os
from typing import List, Tuple

import numpy as np
import torch


#: the released benchmark's split seeds (experiments/configs/datasets/*.gin)
SPLIT_SEEDS = (1234, 100, 44, 13, 7407, 5357)
#: ``NoamLRScheduler.model_size`` of the released R-MAT configuration (an lr scale, not the model width)
NOAM_MODEL_SIZE = 768
NOAM_WARMUP_FACTOR = 0.2


def noam_factor(step: int, total_steps: int, warmup_factor: float = NOAM_WARMUP_FACTOR,
                model_size: int = NOAM_MODEL_SIZE) -> float:
    """The released ``NoamLRScheduler.get_lr`` / base lr at optimiser step ``step`` (from 0):
    100 · model_size^−½ · min(s^−½, s · w^−1.5) with s = step + 1 and w = warmup_factor · total_steps."""
    s = step + 1
    warmup = warmup_factor * total_steps
    return 100.0 * model_size ** -0.5 * min(s ** -0.5, s * (1e-6 + warmup) ** -1.5)


class RMATBatcher:
    """Packed batches of a featurised set (:class:`~gtkernels.data.rmat_data.RMATDataset` or
    :class:`~gtkernels.data.rmat_data.PackedMolecules`) for :class:`gtkernels.models.RMAT`.

    Same interface as :class:`gtkernels.train.Batcher`: ``y`` (targets, float64), ``res`` (what the model is
    trained on: the targets less ``ref_sum``, the data set's Σ atomref, 0 but for QM9 energies), ``ds.n_atoms``,
    :meth:`batch` and :meth:`forward`. ``mean`` and ``std`` standardise the model's output: value = out · std
    + mean.
    """

    def __init__(self, ds, mean: float = 0.0, std: float = 1.0):
        self.ds = ds
        self.y = np.asarray(ds.y, dtype=np.float64)
        self.ref_sum = np.asarray(getattr(ds, "ref_sum", np.zeros(len(self.y))), dtype=np.float64)
        self.res = self.y - self.ref_sum
        self.mean, self.std = float(mean), float(std)

    def gather(self, idx: np.ndarray):
        return self.ds.gather(idx)

    def batch(self, idx: np.ndarray, device, layout: str = "packed", augment: bool = False):
        """``(model inputs, targets less Σ atomref, float64 [B])`` of molecules ``idx`` on ``device`` (no
        augmentation)."""
        features, pos, code, cu, _ = self.gather(idx)
        return self.to_tensors(features, pos, code, cu, self.res[np.asarray(idx)], device, layout)

    @staticmethod
    def to_tensors(features, pos, code, cu, y, device, layout: str = "packed"):
        from .data.batching import packed_to_padded
        from .ops.relation_code import unpack_graph_code
        f = torch.from_numpy(features.astype(np.float32)).to(device)
        p = torch.from_numpy(np.ascontiguousarray(pos)).to(device)
        c = torch.from_numpy(code).to(device)
        seg = torch.from_numpy(cu).to(device)
        yt = None if y is None else torch.from_numpy(np.asarray(y, dtype=np.float64)).to(device)
        max_seqlen = int(np.diff(cu).max()) if len(cu) > 1 else 0
        if layout == "padded":
            fp, pp, mask = packed_to_padded(f, p, seg.to(torch.int32))
            return dict(features=fp, pos=pp, graph_code=unpack_graph_code(c, seg, max_seqlen), mask=mask), yt
        return dict(features=f, pos=p, graph_code=c, cu_seqlens=seg.to(torch.int32), max_seqlen=max_seqlen), yt

    def forward(self, model, inputs: dict) -> torch.Tensor:
        """Predicted values ``[B]`` (the model's output · std + mean), in the model's dtype."""
        return model(**inputs).squeeze(-1) * self.std + self.mean


def norm_stats(batcher: RMATBatcher, train_idx: np.ndarray) -> Tuple[float, float]:
    """Mean and std of the training targets less Σ atomref (per molecule, as R-MAT's pooled read-out)."""
    y = batcher.res[train_idx]
    return float(y.mean()), float(max(y.std(), 1e-6))


def read_molecules(path: str, seed: int = 0):
    """Featurised molecules of a SMILES file (one per line: the SMILES, optionally a name after white space;
    ``#`` comments), a CSV with a ``smiles`` column, or an SDF (3D coordinates used as they are); also a single
    SMILES given in place of a file. Returns ``(names, molecules, elements)``, ``elements`` the atomic numbers of
    every atom, hydrogens included (for QM9 energies' Σ atomref); a molecule that cannot be featurised raises
    ``ValueError`` naming the file and line / record."""
    from .data.rmat_features import FeaturisationError, _chem, featurise_record, featurise_smiles
    items: List[Tuple[object, str]] = []
    if not os.path.exists(path):
        if any(c.isspace() for c in path.strip()) or os.sep in path:
            raise FileNotFoundError(f"{path} does not exist (give a .smi / .csv / .sdf file or one SMILES)")
        items = [(path.strip(), f"SMILES {path.strip()!r}")]
    elif path.lower().endswith((".sdf", ".sd", ".mol")):
        Chem, _ = _chem()
        for k, mol in enumerate(Chem.SDMolSupplier(path)):
            name = mol.GetProp("_Name") if mol is not None and mol.HasProp("_Name") else ""
            items.append((mol, f"{path} record {k + 1}" + (f" ({name})" if name else "")))
    elif path.lower().endswith(".csv"):
        import csv
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            col = next((c for c in (reader.fieldnames or []) if c.lower() == "smiles"), None)
            if col is None:
                raise ValueError(f"{path}: a CSV needs a 'smiles' column, got columns {reader.fieldnames}")
            items = [(row[col], f"{path} row {k + 2}") for k, row in enumerate(reader)]
    else:
        with open(path) as fh:
            for k, line in enumerate(fh):
                text = line.split("#", 1)[0].strip()
                if text:
                    items.append((text.split()[0], f"{path} line {k + 1}"))
    if not items:
        raise ValueError(f"{path} holds no molecules")
    Chem, _ = _chem()
    out, names, elements = [], [], []
    for item, label in items:
        try:
            mol = (featurise_smiles(item, seed, name=label) if isinstance(item, str)
                   else featurise_record(item, seed, name=label))
        except FeaturisationError as exc:
            raise ValueError(str(exc)) from None
        rd = Chem.AddHs(Chem.MolFromSmiles(item) if isinstance(item, str) else item)
        out.append(mol)
        names.append(label)
        elements.append(np.array([a.GetAtomicNum() for a in rd.GetAtoms()], dtype=np.int64))
    return names, out, elements


def total_steps(n_train: int, per_process: int, world: int, epochs: int) -> int:
    """Optimiser steps of ``epochs`` epochs (the training loop's batches: the last one partial, whole groups of
    ``world`` batches per step)."""
    batches = -(-n_train // per_process)
    return max(1, batches // world * epochs)


def lr_lambda(total: int, warmup_factor: float):
    return lambda step: noam_factor(step, total, warmup_factor)



"""An ASE ``Calculator`` driven by a trained Geometric Transformer (energy, and forces for energy targets).

>>> from gtkernels.ase_calculator import GTCalculator
>>> atoms.calc = GTCalculator("runs/u0")            # a run folder, or a model (predicting meV)
>>> atoms.get_potential_energy(), atoms.get_forces()  # eV, eV/Å (ASE units)
"""
from __future__ import annotations

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes

from .data.units import BY_NAME, QM9_ELEMENTS


class GTCalculator(Calculator):
    implemented_properties = ["energy", "forces"]

    def __init__(self, model, *, target: str | None = None, checkpoint: str = "best", device: str = "cpu",
                 elements=QM9_ELEMENTS, **kwargs):
        super().__init__(**kwargs)
        if isinstance(model, str):
            from .train import load_run
            model, config = load_run(model, checkpoint)
            target = config["target"]
        self.model = model.eval().to(device)
        self.target = target or getattr(model, "target", None)
        if self.target is not None and not BY_NAME[self.target].energy:
            raise ValueError(f"this model predicts {self.target!r}, not an energy: it cannot drive ASE")
        self.device, self.elements = torch.device(device), frozenset(elements)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        z = np.asarray(self.atoms.numbers)
        unknown = sorted(set(z.tolist()) - self.elements)
        if unknown:
            raise ValueError(f"elements {unknown} (atomic numbers) were not in the training data")
        dtype = self.model.embedding.weight.dtype
        zt = torch.as_tensor(z, dtype=torch.int64, device=self.device)[None]
        pos = torch.as_tensor(self.atoms.positions, dtype=dtype, device=self.device)[None]
        mask = torch.ones_like(zt, dtype=torch.bool)
        if "forces" in properties:
            e, f = self.model.forces(zt, pos, mask)
            self.results["forces"] = f[0].detach().double().cpu().numpy() / 1000.0   # meV/Å → eV/Å
        else:
            with torch.no_grad():
                e = self.model(zt, pos, mask)
        self.results["energy"] = float(e[0].detach()) / 1000.0                                # meV → eV

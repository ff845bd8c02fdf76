"""An ASE ``Calculator`` driven by a trained Geometric Transformer (energy, and forces for energy targets).

>>> from gtkernels.ase_calculator import GTCalculator
>>> atoms.calc = GTCalculator("runs/u0")            # a run folder, or a model (predicting meV)
>>> atoms.get_potential_energy(), atoms.get_forces()  # eV, eV/Å (ASE units)

Precision: the network runs in its weights' dtype (float32), positions go in as float64, and the read-out
(``·std + mean + atomref`` and the sum over atoms) is float64, so energies resolve ~1e-7 relative (not
float32's 0.25 meV steps at U0 ~ 3e6 meV) and the forces are the exact gradient of that energy.
Out-of-domain atoms (elements, sizes, distances the training set did not have) give an
:class:`~gtkernels.data.molecules.OutOfDomainWarning` per calculation; periodic atoms are an error.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes

from .data.molecules import Molecule, check_domain, default_domain
from .data.units import BY_NAME, MEV_PER_EV


class GTCalculator(Calculator):
    """Args:
        model: a run folder (its ``config.json`` gives the target and the training domain) or a model
            predicting meV.
        target: the model's target when ``model`` is a module (default: ``model.target``); must be an energy.
        checkpoint: ``"best"`` or ``"last"`` (run folders).
        device: where the model runs.
        domain: the training domain (:func:`gtkernels.data.molecules.training_domain`), for the out-of-domain
            warnings; default: the run's, else QM9's elements and sizes.
        elements: atomic numbers seen in training (overrides ``domain["elements"]``).
    """

    implemented_properties = ["energy", "forces"]

    def __init__(self, model, *, target: str | None = None, checkpoint: str = "best", device: str = "cpu",
                 domain: Optional[dict] = None, elements=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(model, str):
            from .train import load_run
            model, config = load_run(model, checkpoint)
            target = config["target"]
            domain = domain or config.get("domain")
        self.model = model.eval().to(device)
        self.target = target or getattr(model, "target", None)
        if self.target is not None and not BY_NAME[self.target].energy:
            raise ValueError(f"this model predicts {self.target!r}, not an energy: it cannot drive ASE")
        self.domain = dict(domain or default_domain())
        if elements is not None:
            self.domain["elements"] = sorted(int(z) for z in elements)
        self.device = torch.device(device)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if np.any(self.atoms.pbc):
            raise ValueError(f"the Atoms are periodic (pbc={[bool(p) for p in self.atoms.pbc]}); the model has no "
                             "periodic images. Use a finite molecule: atoms.pbc = False")
        z = np.asarray(self.atoms.numbers)
        pos = np.asarray(self.atoms.positions, dtype=np.float64)
        if not np.isfinite(pos).all():
            raise ValueError("the Atoms have non-finite positions")
        check_domain([Molecule(-1, z, pos)], self.domain, source="the Atoms",
                     max_z=self.model.embedding.num_embeddings)
        zt = torch.as_tensor(z, dtype=torch.int64, device=self.device)[None]
        # float64 positions: distances in float64 whatever the weights' dtype (GeometricTransformer._positions)
        post = torch.as_tensor(pos, dtype=torch.float64, device=self.device)[None]
        mask = torch.ones_like(zt, dtype=torch.bool)
        if "forces" in properties:
            e, f = self.model.forces(zt, post, mask)
            self.results["forces"] = f[0].detach().double().cpu().numpy() / MEV_PER_EV   # meV/Å → eV/Å
        else:
            with torch.no_grad():
                e = self.model(zt, post, mask)
        self.results["energy"] = float(e[0].detach().double()) / MEV_PER_EV                     # meV → eV

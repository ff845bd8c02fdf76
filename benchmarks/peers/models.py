"""The cases of the peer benchmarks: our model and the QM9 models of the packages a user would pick instead.

Each :class:`Case` builds its model from the package's published QM9 configuration, turns a packed batch of
molecules (numpy ``z`` uint8 ``[T]``, ``pos`` float64 ``[T, 3]`` Å, ``cu`` int64 ``[B+1]``) into the model's
inputs, and gives energies ``[B]`` in meV of the target every case learns: U0 less Σ atomref (the
residual of :class:`gtkernels.train.Batcher`). Our model standardises inside (per-atom ``mean``/``std``
buffers); the peers add ``n_atoms × mean`` as SchNetPack's ``RemoveOffsets``/``AddOffsets`` do, in eV (their
published unit) — so an MSE loss means what it means in their own pipelines.

Neighbour lists, as each package's users get them by default:

- SchNetPack: ``MatScipyNeighborList`` is a data transform (cutoff 5 Å), computed in the data pipeline, not in
  the model: built here in :meth:`Case.inputs`, outside the timed step (as a cached pipeline would give them).
- PyG SchNet / DimeNet++: ``radius_graph`` inside ``forward`` (timed). torch-cluster and torch-sparse are absent
  (no wheels for this torch), so :mod:`benchmarks.peers.neighbours` stands in for ``radius_graph`` and
  DimeNet's ``triplets``, in plain torch.
- TorchMD-Net ET: its ``OptimizedDistance`` (NVIDIA Warp kernels) inside ``forward`` (timed).
- ours: all pairs of a molecule inside the fused kernels (no list).
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import typing
from typing import Callable, Dict, Optional

import numpy as np
import torch

from benchmarks.peers import neighbours

EV = 1000.0   # meV per eV
CUTOFF = 5.0  # Å: SchNetPack's qm9_atomwise, ET-QM9.yaml and DimeNet++ (PyG's SchNet default is 10 Å)

#: torchmd-net's examples/ET-QM9.yaml, the values create_model reads (prior Atomref dropped: the targets here
#: already have Σ atomref removed, which is what the prior adds back)
ET_QM9 = dict(model="equivariant-transformer", embedding_dimension=256, num_layers=8, num_rbf=64,
              rbf_type="expnorm", trainable_rbf=False, activation="silu", attn_activation="silu", num_heads=8,
              distance_influence="both", neighbor_embedding=True, cutoff_lower=0.0, cutoff_upper=CUTOFF, max_z=100,
              max_num_neighbors=64, aggr="add", derivative=False, atom_filter=-1, prior_model=None,
              output_model="Scalar", reduce_op="add", precision=32, standardize=False, charge=False, spin=False,
              vector_cutoff=False, box_vecs=None, static_shapes=False)


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _schnetpack():
    """``import schnetpack``: 2.1.1 imports ``T_co`` from torch's dataloader module, which torch 2.13 dropped;
    the name (a plain TypeVar, used only in annotations) is put back first."""
    import torch.utils.data.dataloader as dl
    if not hasattr(dl, "T_co"):
        dl.T_co = typing.TypeVar("T_co", covariant=True)
    import schnetpack
    return schnetpack


@dataclasses.dataclass
class Case:
    """One model of one package. ``loss`` / ``lr`` / ``batch`` / ``optimizer``: its published QM9 training
    recipe (time to accuracy); ``neighbours``: how its neighbour list is built and whether the timed step holds it."""
    name: str
    package: str            # distribution name (version lookup, skip reason)
    module: str             # importable module that must exist
    build: Callable[[float, float], torch.nn.Module]     # (per-atom mean meV, per-atom std meV) -> model
    inputs: Callable[[np.ndarray, np.ndarray, np.ndarray], dict]
    energy: Callable[[torch.nn.Module, dict], torch.Tensor]   # meV [B]
    neighbours: str
    loss: str = "mse"       # of the energies in eV (SchNetPack, torchmd-net), or "l1" in meV (ours)
    lr: float = 5e-4
    batch: int = 100
    optimizer: str = "adamw"
    label: str = ""

    def missing(self) -> Optional[str]:
        """Why this case cannot run here, or None."""
        if importlib.util.find_spec(self.module) is None:
            return (f"{self.package} is not installed (make peers, or pip install -r requirements-peers.txt; "
                    f"see BENCHMARKS.md 'Against other packages')")
        return None

    @property
    def title(self) -> str:
        return self.label or f"{self.name} ({self.package} {version(self.package)})"


def positions(inputs: dict) -> torch.Tensor:
    """The tensor of atom positions inside ``inputs`` (forces are −∂E/∂ of it)."""
    return inputs["_positions"] if "_positions" in inputs else inputs["pos"]


# ------------------------------------------------------------------------------------------------- ours
def _ours(preset: str, backend: str) -> Case:
    from gtkernels.data.units import atomref
    from gtkernels.models import GeometricTransformer

    def build(mean, std):
        return GeometricTransformer(preset, backend=backend, validate=False, target="U0", mean=mean, std=std,
                                    atomref=torch.as_tensor(atomref("U0")))

    def inputs(z, pos, cu):
        return dict(z=torch.from_numpy(z.astype(np.int64)), pos=torch.from_numpy(pos),
                    cu_seqlens=torch.from_numpy(cu.astype(np.int32)), max_seqlen=int(np.diff(cu).max()))

    def energy(model, inp):
        return model(inp["z"], inp["pos"], cu_seqlens=inp["cu_seqlens"], max_seqlen=inp["max_seqlen"],
                     include_atomref=False)

    kind = "fused" if backend != "reference" else "reference"
    return Case(f"ours-{preset}-{kind}", "gtkernels", "gtkernels", build, inputs, energy,
                "none: every pair of a molecule, inside the fused kernels (timed)" if kind == "fused" else
                "none: every pair of a molecule, dense N x N tensors (timed)",
                loss="l1", lr=5e-4, batch=32, optimizer="adam",
                label=f"ours, {preset}, {kind}" + ("" if kind == "fused" else " (eager gtkernels_py)"))


# ------------------------------------------------------------------------------------------- SchNetPack
class _SchNetPackEnergy(torch.nn.Module):
    """A SchNetPack ``NeuralNetworkPotential`` (PairwiseDistances → representation → Atomwise sum) whose energy
    in eV gets ``n_atoms × mean`` added back (``AddOffsets(add_mean=True)``); returns meV ``[B]``."""

    def __init__(self, representation: torch.nn.Module, mean_mev: float):
        super().__init__()
        spk = _schnetpack()
        self.net = spk.model.NeuralNetworkPotential(
            representation=representation, input_modules=[spk.atomistic.PairwiseDistances()],
            output_modules=[spk.atomistic.Atomwise(n_in=representation.n_atom_basis, output_key="energy_U0",
                                                   aggregation_mode="sum")])
        self.register_buffer("mean_ev", torch.tensor(mean_mev / EV, dtype=torch.float32))

    def forward(self, inputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        e = self.net(dict(inputs))["energy_U0"]
        return (e + inputs["_n_atoms"] * self.mean_ev) * EV


def _schnetpack_inputs(z, pos, cu):
    spk = _schnetpack()
    props = spk.properties
    i, j = neighbours.radius_pairs_numpy(pos, cu, CUTOFF)
    counts = torch.from_numpy(np.diff(cu))
    return {props.Z: torch.from_numpy(z.astype(np.int64)), props.R: torch.from_numpy(pos.astype(np.float32)),
            props.idx_m: neighbours.batch_vector(counts), props.n_atoms: counts,
            props.idx_i: torch.from_numpy(i), props.idx_j: torch.from_numpy(j),
            props.offsets: torch.zeros(len(i), 3)}


def _schnetpack_case(kind: str) -> Case:
    def build(mean, std):
        spk = _schnetpack()
        rbf = spk.nn.GaussianRBF(n_rbf=20, cutoff=CUTOFF)
        cut = spk.nn.CosineCutoff(CUTOFF)
        if kind == "PaiNN":   # configs/model/representation/painn.yaml
            rep = spk.representation.PaiNN(n_atom_basis=128, n_interactions=3, radial_basis=rbf, cutoff_fn=cut,
                                           shared_interactions=False, shared_filters=False)
        else:                 # schnet.yaml
            rep = spk.representation.SchNet(n_atom_basis=128, n_interactions=6, radial_basis=rbf, cutoff_fn=cut)
        return _SchNetPackEnergy(rep, mean)

    return Case(kind, "schnetpack", "schnetpack", build, _schnetpack_inputs, lambda m, inp: m(inp),
                "MatScipyNeighborList (5 Å) is a data transform: built before the step, not timed",
                loss="mse", lr=5e-4, batch=100, optimizer="adamw")


# ------------------------------------------------------------------------------------------- PyG
class _PyGEnergy(torch.nn.Module):
    """A PyG model ``f(z, pos, batch) -> [B, 1]`` in eV, plus ``n_atoms × mean``; meV ``[B]``."""

    def __init__(self, net: torch.nn.Module, mean_mev: float):
        super().__init__()
        self.net = net
        self.register_buffer("mean_ev", torch.tensor(mean_mev / EV, dtype=torch.float32))

    def forward(self, inputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        e = self.net(inputs["z"], inputs["pos"], inputs["batch"]).view(-1)
        return (e + inputs["counts"] * self.mean_ev) * EV


def _pyg_inputs(z, pos, cu):
    counts = torch.from_numpy(np.diff(cu))
    return dict(z=torch.from_numpy(z.astype(np.int64)), pos=torch.from_numpy(pos.astype(np.float32)),
                batch=neighbours.batch_vector(counts), counts=counts)


class _RadiusGraph(torch.nn.Module):
    """PyG SchNet's ``interaction_graph``: ``(edge_index, edge_weight)`` from :func:`neighbours.radius_graph`."""

    def __init__(self, cutoff: float):
        super().__init__()
        self.cutoff = cutoff

    def forward(self, pos, batch):
        edge_index = neighbours.radius_graph(pos, self.cutoff, batch)
        row, col = edge_index
        return edge_index, (pos[row] - pos[col]).norm(dim=-1)


def _pyg_schnet(mean, std):
    from torch_geometric.nn.models import SchNet
    # PyG's SchNet defaults (its QM9 example): 128 channels, 6 interactions, 50 Gaussians, cutoff 10 Å, sum readout
    return _PyGEnergy(SchNet(hidden_channels=128, num_filters=128, num_interactions=6, num_gaussians=50,
                             cutoff=10.0, readout="add", interaction_graph=_RadiusGraph(10.0)), mean)


def _pyg_dimenet(mean, std):
    from torch_geometric.nn.models import DimeNetPlusPlus
    from torch_geometric.nn.models import dimenet
    dimenet.radius_graph = neighbours.radius_graph   # torch-cluster absent: plain-torch stand-ins
    dimenet.triplets = neighbours.triplets            # torch-sparse absent
    # DimeNet++'s QM9 hyper-parameters (the paper's, PyG's example)
    return _PyGEnergy(DimeNetPlusPlus(hidden_channels=128, out_channels=1, num_blocks=4, int_emb_size=64,
                                      basis_emb_size=8, out_emb_channels=256, num_spherical=7, num_radial=6,
                                      cutoff=CUTOFF), mean)


# ------------------------------------------------------------------------------------------- TorchMD-Net
class _TorchMDEnergy(torch.nn.Module):
    def __init__(self, mean_mev: float):
        super().__init__()
        from torchmdnet.models.model import create_model
        self.net = create_model(dict(ET_QM9))
        self.register_buffer("mean_ev", torch.tensor(mean_mev / EV, dtype=torch.float32))

    def forward(self, inputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        y, _ = self.net(inputs["z"], inputs["pos"], inputs["batch"])
        return (y.view(-1) + inputs["counts"] * self.mean_ev) * EV


def cases() -> Dict[str, Case]:
    """Every case by name, in table order."""
    out = [_ours("paper", "cpu"), _ours("paper", "reference"), _ours("small", "cpu"), _ours("small", "reference"),
           dataclasses.replace(
               Case("ET", "torchmd-net", "torchmdnet", lambda mean, std: _TorchMDEnergy(mean), _pyg_inputs,
                    lambda m, inp: m(inp), "OptimizedDistance (Warp kernels, 5 Å) inside forward: timed",
                    loss="mse", lr=4e-4, batch=128, optimizer="adamw"), label="ET (torchmd-net, ET-QM9.yaml)"),
           _schnetpack_case("PaiNN"), _schnetpack_case("SchNet"),
           Case("SchNet-PyG", "torch-geometric", "torch_geometric", _pyg_schnet, _pyg_inputs, lambda m, inp: m(inp),
                "radius_graph (10 Å) inside forward, a plain-torch stand-in (no torch-cluster): timed",
                loss="l1", lr=5e-4, batch=32, optimizer="adam", label="SchNet (torch-geometric)"),
           Case("DimeNet++", "torch-geometric", "torch_geometric", _pyg_dimenet, _pyg_inputs, lambda m, inp: m(inp),
                "radius_graph (5 Å) + triplets inside forward, plain-torch stand-ins (no torch-cluster, "
                "torch-sparse): timed", loss="l1", lr=1e-3, batch=32, optimizer="adam",
                label="DimeNet++ (torch-geometric)")]
    for c in out:
        if not c.label:
            c.label = f"{c.name} ({c.package})"
    return {c.name: c for c in out}


def parameters(model: torch.nn.Module) -> int:
    """Trainable parameters (buffers such as frozen atom references are not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

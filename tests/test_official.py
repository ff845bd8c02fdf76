"""gtkernels.models.official.load_official: checkpoints of the paper's code (yoniLc/GeometricTransformerMolecule).

The fixture is a synthetic state dict with the parameter names and shapes of that code's GeoTransformer (its
GeometricTransformer.py: AtomEmb = Embedding(50, d), Pos_encoding(d, dims=50), MultiHeadedAttention with 4 bias-free
linears and distance_NN(50, 2), GEGLU(d, 4d, bias=False) + Linear(4d, d, bias=False), pre-LN sublayers, schnetpack
MLP(d, 1, None, 1) read-out and atomref = Embedding.from_pretrained(schnetpack's [100, 1] table)).
"""
import pytest
import torch
from torch import nn

import gtkernels_py
from gtkernels.data import pad
from gtkernels.models.official import convert_official_state_dict, load_official
from conftest import requires_ase
from helpers import qm9_molecules, rel_err

D, HEADS, LAYERS = 16, 4, 2
#: QM9's atom reference energies U0 (Hartree) and CODATA 2014's Hartree in eV (ase.units.Hartree), written out
#: here independently of gtkernels.data.units.
U0_HARTREE = {1: -0.500273, 6: -37.846772, 7: -54.583861, 8: -75.064579, 9: -99.718730}
HARTREE_EV = 27.211386024367243
DEBYE_E_ANGSTROM = 0.20819434  # 1 D in e·Å


def paper_state_dict(seed=0, atomref_rows=100, atomref=None):
    """Random weights under the paper's GeoTransformer parameter names, with its shapes (d_model = D)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.3):
        return (torch.rand(*shape, generator=g) * 2 - 1) * scale

    sd = {"AtomEmb.weight": r(50, D),
          "pos_encoder.net.0.weight": r(50, 1), "pos_encoder.net.0.bias": r(50),
          "pos_encoder.net.2.weight": r(1, 50), "pos_encoder.net.2.bias": r(1),
          "pos_encoder.embed.weight": r(D, 1), "pos_encoder.embed.bias": r(D)}
    sd["AtomEmb.weight"][0] = 0  # padding_idx=0
    for i in range(LAYERS):
        p = f"Encoder.layers.{i}."
        for k in range(4):
            sd[p + f"self_attn.linears.{k}.weight"] = r(D, D)
        for k, (o, n) in zip((0, 2, 4, 6), ((50, 1), (50, 50), (50, 50), (1, 50))):
            sd[p + f"self_attn.transform_dist.seq.{k}.weight"] = r(o, n)
            sd[p + f"self_attn.transform_dist.seq.{k}.bias"] = r(o)
        sd[p + "feed_forward.0.weight"] = r(4 * D, D)
        sd[p + "feed_forward.0.weight2"] = r(4 * D, D)
        sd[p + "feed_forward.2.weight"] = r(D, 4 * D)
        for k in (0, 1):
            sd[p + f"sublayer.{k}.norm.weight"] = 1 + r(D, scale=0.1)
            sd[p + f"sublayer.{k}.norm.bias"] = r(D, scale=0.1)
    sd["Encoder.norm.weight"], sd["Encoder.norm.bias"] = 1 + r(D, scale=0.1), r(D, scale=0.1)
    sd["pred_net.0.out_net.0.weight"], sd["pred_net.0.out_net.0.bias"] = r(1, D), r(1)
    if atomref_rows:
        table = torch.zeros(atomref_rows, 1)
        for z, v in (atomref or {}).items():
            table[z, 0] = v
        sd["atomref.weight"] = table
    return sd


def to_reference_names(sd):
    """The paper's names → gtkernels_py's, written out (independent of official._RULES)."""
    out = {}
    for k, v in sd.items():
        p = k.split(".")
        if k == "AtomEmb.weight":
            n = "embedding.weight"
        elif k.startswith("pos_encoder."):
            n = "encoding." + k[len("pos_encoder."):]
        elif k.startswith("Encoder.layers."):
            i, rest = p[2], ".".join(p[3:])
            n = {"feed_forward.0.weight": "ff.0.w1.weight", "feed_forward.0.weight2": "ff.0.w2.weight",
                 "feed_forward.2.weight": "ff.2.weight", "sublayer.0.norm.weight": "norm1.weight",
                 "sublayer.0.norm.bias": "norm1.bias", "sublayer.1.norm.weight": "norm2.weight",
                 "sublayer.1.norm.bias": "norm2.bias"}.get(rest) or "attn." + rest[len("self_attn."):]
            n = f"layers.{i}.{n}"
        elif k.startswith("Encoder.norm."):
            n = "norm." + p[-1]
        elif k.startswith("pred_net."):
            n = "head." + p[-1]
        elif k == "atomref.weight":
            n, v = "atomref", v[:50, 0]
        out[n] = v
    return out


def module_from_state_dict(sd, **attrs):
    """An nn.Module tree whose state dict is ``sd`` (a stand-in for the pickled GeoTransformer)."""
    root = nn.Module()
    for name, value in sd.items():
        *path, leaf = name.split(".")
        m = root
        for part in path:
            if not hasattr(m, part):
                m.add_module(part, nn.Module())
            m = getattr(m, part)
        m.register_parameter(leaf, nn.Parameter(value.clone(), requires_grad=False))
    for k, v in attrs.items():
        setattr(root, k, v)
    return root


class PaperStandIn(nn.Module):
    """A module class only this test file defines: pickled with torch.save(model), as the paper's Main.py does."""

    def __init__(self):
        super().__init__()
        self.AtomEmb = nn.Embedding(50, D)


def _ch4():
    z = torch.tensor([[6, 1, 1, 1, 1]])
    pos = torch.tensor([[[0, 0, 0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63], [-0.63, 0.63, -0.63],
                         [0.63, -0.63, -0.63]]], dtype=torch.float64)
    return z, pos


def _zero_readout(sd, bias=0.0):
    sd["pred_net.0.out_net.0.weight"].zero_()
    sd["pred_net.0.out_net.0.bias"].fill_(bias)
    return sd


def test_paper_state_dict_matches_reference_model(tmp_path):
    sd = paper_state_dict(atomref={1: -0.5, 6: -37.8})
    torch.save(sd, tmp_path / "official.pt")
    loaded = load_official(str(tmp_path / "official.pt"), num_heads=HEADS, mean=-5.0, std=2.0,
                           backend="reference", units="gtkernels").double()
    ref = gtkernels_py.GeometricTransformer(num_layers=LAYERS, d_model=D, num_heads=HEADS, mean=-5.0, std=2.0)
    ref.load_state_dict({**to_reference_names(sd), "mean": ref.mean, "std": ref.std})
    ref = ref.double()
    z, pos, mask = pad(qm9_molecules(3), torch.float64)
    assert rel_err(loaded(z, pos, mask), ref(z, pos, mask)) < 1e-12
    # the same through a {"model": ...} wrapper and a DataParallel prefix
    wrapped = {"model": {"module." + k: v for k, v in sd.items()}}
    again = load_official(wrapped, num_heads=HEADS, mean=-5.0, std=2.0, backend="reference", units="gtkernels")
    assert torch.equal(again.state_dict()["layers.1.attn.transform_dist.seq.6.bias"],
                       sd["Encoder.layers.1.self_attn.transform_dist.seq.6.bias"])


def test_atomref_table_of_100_rows():
    sd = paper_state_dict(atomref={1: -13.6, 6: -1029.8})
    assert sd["atomref.weight"].shape == (100, 1)
    m = load_official(sd, num_heads=HEADS, backend="reference", units="gtkernels")
    assert m.atomref.shape == (50,)
    assert m.atomref[1].item() == pytest.approx(-13.6) and m.atomref[6].item() == pytest.approx(-1029.8)
    assert m.atomref[[0, 2, 7, 49]].abs().max().item() == 0
    # a shorter table is padded with zeros, a missing one (targets without references) is all zeros
    short = paper_state_dict(atomref_rows=10, atomref={6: 1.0})
    assert load_official(short, num_heads=HEADS, units="gtkernels").atomref[6].item() == 1.0
    none = paper_state_dict(atomref_rows=0)
    assert load_official(none, num_heads=HEADS, units="gtkernels").atomref.abs().max().item() == 0


def test_atomref_beyond_embedding_must_be_zero():
    sd = paper_state_dict(atomref={1: -13.6, 79: -5.0})
    with pytest.raises(ValueError, match=r"atomref.*\[79\].*beyond the embedding's 50 rows"):
        load_official(sd, num_heads=HEADS, units="gtkernels")
    sd["atomref.weight"] = torch.zeros(100, 2)
    with pytest.raises(ValueError, match=r"atomref.weight must be \[Z, 1\].*\(100, 2\)"):
        load_official(sd, num_heads=HEADS, units="gtkernels")


def test_schnetpack_energy_units_to_mev():
    """The paper trains U0 in eV (schnetpack v1): atomref and μ, σ in eV → the model predicts meV, so CH4's
    atom references alone sum to about -1084 eV (not -1.08 eV)."""
    ev = {z: v * HARTREE_EV for z, v in U0_HARTREE.items()}
    sd = _zero_readout(paper_state_dict(atomref=ev), bias=0.25)
    m = load_official(sd, num_heads=HEADS, mean=0.1, std=0.5, target="U0", backend="reference").double()
    z, pos = _ch4()
    want_ev = ev[6] + 4 * ev[1] + 5 * (0.25 * 0.5 + 0.1)
    got = m(z, pos).item()
    assert got == pytest.approx(1000 * want_ev, rel=1e-6)
    assert -1090 < got / 1000 < -1080
    assert m.target == "U0" and m.mean.item() == pytest.approx(100.0) and m.std.item() == pytest.approx(500.0)


@requires_ase
def test_schnetpack_model_drives_ase_in_ev():
    from ase import Atoms
    from gtkernels.ase_calculator import GTCalculator
    ev = {z: v * HARTREE_EV for z, v in U0_HARTREE.items()}
    m = load_official(_zero_readout(paper_state_dict(atomref=ev)), num_heads=HEADS, target="U0",
                      backend="reference")
    z, pos = _ch4()
    atoms = Atoms("CH4", positions=pos[0].numpy())
    atoms.calc = GTCalculator(m)
    assert atoms.get_potential_energy() == pytest.approx(ev[6] + 4 * ev[1], rel=1e-6)


def test_schnetpack_dipole_units_to_debye():
    # μ in schnetpack v1 is in e·Å: a per-atom mean of 1 D written in e·Å gives 1 D per atom
    m = load_official(_zero_readout(paper_state_dict(atomref_rows=0)), num_heads=HEADS, mean=DEBYE_E_ANGSTROM,
                      std=1.0, target="mu", backend="reference").double()
    z, pos = _ch4()
    assert m(z, pos).item() == pytest.approx(5.0, rel=1e-6)
    # Cv is in cal/mol/K in both
    cv = load_official(_zero_readout(paper_state_dict(atomref={6: 2.981})), num_heads=HEADS, target="Cv")
    assert cv.atomref[6].item() == pytest.approx(2.981)


def test_target_is_required_for_schnetpack_units():
    with pytest.raises(ValueError, match="pass target="):
        load_official(paper_state_dict(), num_heads=HEADS)
    with pytest.raises(ValueError, match="unknown target 'energy'"):
        load_official(paper_state_dict(), num_heads=HEADS, target="energy")
    with pytest.raises(ValueError, match="units must be one of"):
        load_official(paper_state_dict(), num_heads=HEADS, target="U0", units="hartree")


def test_module_object_heads_and_stats_from_its_attributes():
    ev = {1: -13.6}
    sd = _zero_readout(paper_state_dict(atomref=ev))
    module = module_from_state_dict(sd, nhead=HEADS, mean=0.1, std=0.5)
    m = load_official(module, target="U0", backend="reference").double()
    assert m.config["num_heads"] == HEADS
    assert m.mean.item() == pytest.approx(100.0) and m.std.item() == pytest.approx(500.0)
    z = torch.tensor([[1, 1]])
    pos = torch.tensor([[[0.0, 0, 0], [0.74, 0, 0]]], dtype=torch.float64)
    assert m(z, pos).item() == pytest.approx(2 * 1000 * (-13.6 + 0.1), rel=1e-6)
    with pytest.raises(ValueError, match="num_heads=8 contradicts the Module module's nhead = 4"):
        load_official(module, num_heads=8, target="U0")


def test_pickled_module_file_says_how_to_load_it(tmp_path):
    torch.save(PaperStandIn(), tmp_path / "best_model")
    with pytest.raises(ValueError, match=r"best_model.*pickled.*torch.save\(model\).*load_official\(module"):
        load_official(str(tmp_path / "best_model"), target="U0")


def test_gtkernels_checkpoint_is_named_and_redirected(tmp_path):
    from gtkernels.models import GeometricTransformer
    from gtkernels.train import save_atomic
    m = GeometricTransformer("tiny", num_layers=1)
    path = str(tmp_path / "best.pt")
    save_atomic({"model": m.state_dict(), "val_mae": 1.0, "epoch": 0}, path)  # as `gtkernels train` writes it
    with pytest.raises(ValueError, match=r"best\.pt.*written by `gtkernels train`.*load_run"):
        load_official(path, target="U0")
    with pytest.raises(ValueError, match=r"gtkernels GeometricTransformer state dict.*load_state_dict"):
        load_official(m.state_dict(), target="U0")
    with pytest.raises(ValueError, match="is a folder.*load_run"):
        load_official(str(tmp_path), target="U0")


def test_unreadable_files_and_unknown_names(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.pt.*not a readable torch checkpoint"):
        load_official(str(tmp_path / "empty.pt"), target="U0")
    with pytest.raises(ValueError, match=r"no counterpart in gtkernels: 'something.else'"):
        convert_official_state_dict({"something.else": torch.zeros(1)})
    with pytest.raises(TypeError, match="checkpoint must be a path"):
        load_official(42, target="U0")

"""Chemical elements: the one place that maps symbols to atomic numbers (charges Z).

Every element of the periodic table is named here, so that messages can say "U" rather than "Z=92"; which
elements a model can take is a property of the model (its embedding's ``max_z``, and the elements of its
training set: see :func:`gtkernels.data.molecules.check_domain`).
"""
from __future__ import annotations

from typing import Iterable

_TABLE = (
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr "
    "Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb "
    "Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No Lr Rf "
    "Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og").split()

#: Symbol → atomic number, for all 118 elements (``"H": 1`` ... ``"Og": 118``).
ATOMIC_NUMBERS = {s: z for z, s in enumerate(_TABLE, start=1)}
#: Atomic number → symbol.
SYMBOLS = {z: s for s, z in ATOMIC_NUMBERS.items()}


def symbol(z: int) -> str:
    """``"U"`` for 92; ``"Z=0"``-style text for numbers that are not elements."""
    return SYMBOLS.get(int(z), f"Z={int(z)}")


def symbols(zs: Iterable[int]) -> str:
    """``"H, C, S"``: the symbols of atomic numbers ``zs`` (sorted by Z, each once)."""
    return ", ".join(symbol(z) for z in sorted({int(z) for z in zs}))

"""Chemical elements: the one place that maps symbols to atomic numbers (charges Z)."""

#: Atomic numbers of the elements the model's embedding table covers (QM9 has H, C, N, O, F).
ATOMIC_NUMBERS = {
    "H": 1, "He": 2, "Li": 3, "Be": 4, "B": 5, "C": 6, "N": 7, "O": 8, "F": 9, "Ne": 10,
    "Na": 11, "Mg": 12, "Al": 13, "Si": 14, "P": 15, "S": 16, "Cl": 17, "Ar": 18, "K": 19, "Ca": 20,
    "Br": 35, "I": 53,
}
SYMBOLS = {z: s for s, z in ATOMIC_NUMBERS.items()}

"""Residue names that the library, chemistry and preparation code share."""

#: the standard amino acids and selenomethionine: the library entries
#: qr_phenix patches (hydrogen names, nuclear X-H distances)
STANDARD_AMINO_ACIDS = frozenset((
    "ALA", "ARG", "ASN", "ASP", "CYS", "GLN", "GLU", "GLY", "HIS", "ILE",
    "LEU", "LYS", "MET", "MSE", "PHE", "PRO", "SER", "THR", "TRP", "TYR",
    "VAL"))

#: Amber names of protonation states, found in models from MD
PROTONATION_STATE_NAMES = frozenset(("HID", "HIE", "HIP", "ASH", "GLH", "LYN", "CYX", "CYM"))

#: every name that is an amino acid to the charge and hydrogen rules
AMINO_ACIDS = STANDARD_AMINO_ACIDS | PROTONATION_STATE_NAMES

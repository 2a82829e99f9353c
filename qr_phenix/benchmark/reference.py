"""The reference helix of the 1us0 study, built from the PDB entry.

Residues 87-99 of chain A of 1us0 (aldose reductase, 0.66 A): first
conformer kept, occupancies 1, every residue cut back to Gly, boxed in P1
with a 5 A buffer around the heavy atoms, B = 80, then H added with neutral
termini (NH2 named HT1/HT2, COOH named OXT/HXT), as in the published model
(`a87_99_h.pdb`; docs/benchmark_1us0.md, Protocol).

H are placed geometrically, not from a library: the Gly backbone needs only
four rules (amide H, two HA, terminal NH2, COOH), and mmtbx.reduce2 with the
plain CCP4 library cannot place amide and terminal H (docs/fragments.md:
it placed only HA1/HA2 on the helix).
X-H lengths are nuclear (N-H 1.01, C-H 1.09, O-H 0.97 A), as in the
published model; QM engines need nuclear positions.
"""

import os
from dataclasses import dataclass, asdict

import numpy as np

import iotbx.pdb
from cctbx import crystal
from libtbx.utils import Sorry

PDB_ID = "1us0"
CHAIN = "A"
FIRST, LAST = 87, 99
BUFFER = 5.0
B_FACTOR = 80.0

BACKBONE = ("N", "CA", "C", "O")
# nuclear X-H lengths (A)
NH, CH, OH = 1.01, 1.09, 0.97
C_OH = 1.33
TETRAHEDRAL = 109.5
# N-terminal NH2: H-N-CA-C dihedrals 120 apart with the lone pair roughly
# anti to C-alpha's C, the convention of the published model's HT1.
NH2_DIHEDRALS = (-155.0, 85.0)


def place(a, b, c, bond, angle, dihedral):
    """Position of d with |c-d| = bond, angle b-c-d and dihedral a-b-c-d (degrees)."""
    a, b, c = (np.asarray(v, dtype=float) for v in (a, b, c))
    angle, dihedral = np.radians(angle), np.radians(dihedral)
    bc = c - b
    bc /= np.linalg.norm(bc)
    n = np.cross(b - a, bc)
    n /= np.linalg.norm(n)
    m = np.cross(n, bc)
    d2 = np.array([-bond * np.cos(angle),
                   bond * np.sin(angle) * np.cos(dihedral),
                   bond * np.sin(angle) * np.sin(dihedral)])
    return c + d2[0] * bc + d2[1] * m + d2[2] * n


def bond_angle(a, b, c):
    u = np.asarray(a, dtype=float) - b
    v = np.asarray(c, dtype=float) - b
    return np.degrees(np.arccos(np.dot(u, v) / np.linalg.norm(u) / np.linalg.norm(v)))


def read_entry(entry=None, log=None):
    """pdb.input of the 1us0 entry: a local file, or fetched when entry is None."""
    if entry is not None:
        if not os.path.isfile(entry):
            raise Sorry("1us0 entry file not found: %s" % entry)
        return iotbx.pdb.input(file_name=entry)
    try:
        from iotbx.pdb.fetch import fetch
        text = fetch(PDB_ID, entity="model_pdb").read()
    except Exception as e:
        raise Sorry("Could not fetch %s from the PDB (%s). Give the entry as a file:"
                    " entry=/path/to/1us0.pdb" % (PDB_ID, e))
    if isinstance(text, bytes):
        text = text.decode()
    if log is not None:
        print("Fetched %s from the PDB" % PDB_ID, file=log)
    return iotbx.pdb.input(source_info=None, lines=text.splitlines())


def _backbone(entry_input):
    """{resseq: {name: xyz}} for residues FIRST..LAST+1 of the chain, first conformer."""
    h = entry_input.construct_hierarchy()
    h.remove_alt_confs(always_keep_one_conformer=True)
    model = h.models()[0]
    chains = [c for c in model.chains() if c.id == CHAIN]
    if not chains:
        raise Sorry("Chain %s not found in the 1us0 entry" % CHAIN)
    residues = {}
    for chain in chains:
        for rg in chain.residue_groups():
            r = rg.resseq_as_int()
            if FIRST <= r <= LAST + 1 and r not in residues:
                atoms = {a.name.strip(): np.array(a.xyz) for a in rg.atoms()}
                residues[r] = atoms
    for r in range(FIRST, LAST + 1):
        if r not in residues or any(n not in residues[r] for n in BACKBONE):
            raise Sorry("Residue %s%d of 1us0 lacks backbone atoms" % (CHAIN, r))
    return residues


def build_atoms(entry_input):
    """[(resseq, name, element, xyz)] of the Gly helix with H, in the entry's frame."""
    res = _backbone(entry_input)
    out = []
    for r in range(FIRST, LAST + 1):
        bb = res[r]
        heavy = [(n, n[0], bb[n]) for n in BACKBONE]
        hyd = []
        if r == LAST:
            # COOH: OXT trigonal in the peptide plane, HXT anti to O
            ang = (360.0 - bond_angle(bb["O"], bb["C"], bb["CA"])) / 2
            oxt = place(bb["O"], bb["CA"], bb["C"], C_OH, ang, 180.0)
            heavy.append(("OXT", "O", oxt))
        if r == FIRST:
            for name, dih in zip(("HT1", "HT2"), NH2_DIHEDRALS):
                hyd.append((name, place(bb["C"], bb["CA"], bb["N"], NH, TETRAHEDRAL, dih)))
        else:
            c_prev = res[r - 1]["C"]
            ang = (360.0 - bond_angle(c_prev, bb["N"], bb["CA"])) / 2
            hyd.append(("H", place(bb["CA"], c_prev, bb["N"], NH, ang, 180.0)))
        hyd.append(("HA2", place(bb["C"], bb["N"], bb["CA"], CH, TETRAHEDRAL, 120.0)))
        hyd.append(("HA3", place(bb["C"], bb["N"], bb["CA"], CH, TETRAHEDRAL, -120.0)))
        if r == LAST:
            hyd.append(("HXT", place(bb["O"], bb["C"], oxt, OH, TETRAHEDRAL, 180.0)))
        if r == FIRST:
            # published atom order: HA before the terminal H
            hyd = hyd[2:] + hyd[:2]
        out.extend((r, n, e, x) for n, e, x in heavy)
        out.extend((r, n, "H", x) for n, x in hyd)
    return out


def to_pdb_text(atoms, cell):
    cs = crystal.symmetry(unit_cell=cell, space_group_symbol="P 1")
    lines = [iotbx.pdb.format_cryst1_record(crystal_symmetry=cs),
             iotbx.pdb.format_scale_records(unit_cell=cs.unit_cell())]
    for i, (r, name, element, xyz) in enumerate(atoms, start=1):
        fname = name if len(name) == 4 else " " + name.ljust(3)
        lines.append("ATOM  %5d %-4s GLY %s%4d    %8.3f%8.3f%8.3f%6.2f%6.2f          %2s"
                     % (i, fname, CHAIN, r, xyz[0], xyz[1], xyz[2], 1.0, B_FACTOR, element))
    lines.append("END")
    return "\n".join(lines) + "\n"


def build(entry_input):
    """PDB text of the reference: boxed around the heavy atoms with a 5 A buffer."""
    atoms = build_atoms(entry_input)
    heavy = np.array([x for _, _, e, x in atoms if e != "H"])
    lo = heavy.min(axis=0)
    cell = tuple(heavy.max(axis=0) - lo + 2 * BUFFER) + (90.0, 90.0, 90.0)
    shift = BUFFER - lo
    atoms = [(r, n, e, x + shift) for r, n, e, x in atoms]
    return to_pdb_text(atoms, cell)


@dataclass
class Comparison:
    n_matched: int
    n_reference: int
    n_built: int
    rmsd_all: float
    rmsd_heavy: float
    rmsd_h: float
    max_deviation: float
    max_deviation_atom: str
    cell_difference: float

    def as_dict(self):
        return asdict(self)


def _keyed(pdb_input):
    h = pdb_input.construct_hierarchy()
    return {(a.parent().parent().resseq_as_int(), a.name.strip()): np.array(a.xyz)
            for a in h.atoms()}


def compare(built_text, published_path):
    """Per-atom comparison (matched by residue number and name), no superposition:
    both are in the same box frame."""
    b_in = iotbx.pdb.input(source_info=None, lines=built_text.splitlines())
    p_in = iotbx.pdb.input(file_name=published_path)
    b, p = _keyed(b_in), _keyed(p_in)
    keys = [k for k in p if k in b]
    d = np.array([np.linalg.norm(b[k] - p[k]) for k in keys])
    is_h = np.array([k[1].startswith("H") for k in keys])
    i_max = int(np.argmax(d))
    cell_b = np.array(b_in.crystal_symmetry().unit_cell().parameters()[:3])
    cell_p = np.array(p_in.crystal_symmetry().unit_cell().parameters()[:3])
    rms = lambda x: float(np.sqrt(np.mean(x ** 2))) if len(x) else 0.0
    return Comparison(
        n_matched=len(keys), n_reference=len(p), n_built=len(b),
        rmsd_all=rms(d), rmsd_heavy=rms(d[~is_h]), rmsd_h=rms(d[is_h]),
        max_deviation=float(d[i_max]),
        max_deviation_atom="%d %s" % keys[i_max],
        cell_difference=float(np.max(np.abs(cell_b - cell_p))))


def write(text, path):
    with open(path, "w") as f:
        f.write(text)
    return path

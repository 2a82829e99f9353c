"""A model's residues, or the chemical groups amino acids are cut into, with
their formal charges; and the residues of its crystal symmetry copies near
it.  Fragments are built from these units (qr_phenix.fragmentation), and
preparation reports charges and removes clashing waters with them.
"""

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from qr_phenix import chemistry


@dataclass
class Unit:
    """A residue (or a residue's symmetry image): fragments are made of units."""

    label: str
    atoms: np.ndarray       # extended indices
    charge: int
    source: int = -1        # unit index this is an image of (-1: a model residue)


@dataclass
class SymmetryImages:
    """Image atoms: source model atom and Cartesian operator x' = R x + t."""

    source: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    rotation: np.ndarray = field(default_factory=lambda: np.zeros((0, 3, 3)))
    translation: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))

    def __len__(self):
        return len(self.source)

    def sites(self, sites):
        if len(self.source) == 0:
            return np.zeros((0, 3))
        x = sites[self.source]
        return np.einsum("kij,kj->ki", self.rotation, x) + self.translation


def model_units(hierarchy, log=None, split_residues=False):
    """Units with their formal charges: residues, or with `split_residues`
    amino acids cut into chemical groups (see `_amino_acid_groups`).

    Polymer residues, waters and ions: qr_phenix.chemistry.residue_charge
    (protonation read from the hydrogens present).  Ligands it has no rule
    for: the sum of the PDB charge column of their atoms, which
    `python -m qr_phenix.prepare` writes; else neutral (reported).
    """
    atoms = hierarchy.atoms()
    atoms.reset_i_seq()  # a select()-ed hierarchy keeps its parent's i_seqs
    residues = chemistry.residues(hierarchy)
    # termini/disulfide/metal checks only need polymer residues, ions and
    # residues with a C that can bond an N (modified residues in a chain)
    context = [r for r in residues if r.resname in chemistry.AMINO_ACIDS
               or (r.resname in chemistry.ION_CHARGES and len(r.names) == 1)
               or "C" in r.names]
    units, assumed = [], []
    open_carbonyl = None   # (unit index, C position) of the previous residue's C=O
    for r in residues:
        rc = chemistry.residue_charge(r, context)
        if rc is None:
            assumed.append(r.label)
        q = 0 if rc is None else rc.charge
        groups = _amino_acid_groups(r) if split_residues else None
        if groups is None:
            units.append(Unit(label=r.label, atoms=np.array(r.i_seqs, dtype=int), charge=int(q)))
            open_carbonyl = None
            continue
        ids = np.array(r.i_seqs, dtype=int)
        n_xyz = r.atom("N")
        if open_carbonyl is not None and np.linalg.norm(open_carbonyl[1] - n_xyz) < 1.8:
            # peptide group: C=O of the previous residue with this N-H
            k = open_carbonyl[0]
            units[k].atoms = np.concatenate([units[k].atoms, ids[groups["n"]]])
            units[k].label += " + %s N" % r.label
        else:
            units.append(Unit(label=r.label + " N", atoms=ids[groups["n"]],
                              charge=rc.parts.get("n_terminus", 0)))
        units.append(Unit(label=r.label + " CA", atoms=ids[groups["ca"]], charge=0))
        if groups["side"]:
            units.append(Unit(label=r.label + " side chain", atoms=ids[groups["side"]],
                              charge=rc.parts.get("side_chain", 0)))
        units.append(Unit(label=r.label + " C", atoms=ids[groups["c"]],
                          charge=rc.parts.get("c_terminus", 0)))
        open_carbonyl = (len(units) - 1, r.atom("C"))
    if assumed and log is not None:
        print("  fragments: no charge rule or charge column for %s: taken as neutral"
              % ", ".join(assumed[:10]) + (" ..." if len(assumed) > 10 else ""), file=log)
    return units


#: backbone atoms of the groups an amino acid is cut into (hydrogens follow
#: the heavy atom they sit on)
_N_GROUP = {"N"}
_CA_GROUP = {"CA"}
_C_GROUP = {"C", "O", "OXT"}


def _amino_acid_groups(res):
    """Local indices of an amino acid's groups: "n" (N and its H), "ca" (CA and
    its H), "c" (C, O, OXT and their H) and "side" (the rest).  The cuts fall
    on the single bonds N-CA, CA-C and CA-CB, which an H cap models well;
    the peptide C-N bond is never cut (the caller joins C=O with the next N-H).
    None when the residue is not a complete amino acid backbone."""
    if res.resname not in chemistry.AMINO_ACIDS or any(
            res.atom(a) is None for a in ("N", "CA", "C", "O")):
        return None
    heavy = [k for k, e in enumerate(res.elements) if e not in ("H", "D")]
    hvy_xyz = res.xyz[heavy]
    owner = {}
    for k, e in enumerate(res.elements):
        if e in ("H", "D"):
            owner[k] = heavy[int(np.argmin(np.linalg.norm(hvy_xyz - res.xyz[k], axis=1)))]
        else:
            owner[k] = k
    groups = {"n": [], "ca": [], "c": [], "side": []}
    for k in range(len(res.names)):
        name = res.names[owner[k]]
        key = ("n" if name in _N_GROUP else "ca" if name in _CA_GROUP
               else "c" if name in _C_GROUP else "side")
        groups[key].append(k)
    return groups


def symmetry_images(sites, units, crystal_symmetry, cutoff, unit_neighbours=None,
                    heavy=None):
    """Whole residues of symmetry copies with an atom within `cutoff` of the model.

    unit_neighbours: {unit: set of covalently bonded units}; the bonded
    neighbours of every selected image residue come along (same operator), so
    a bond cut at the edge of a buffer is seen and capped.
    Returns (SymmetryImages, image units with extended indices starting at n).
    Lattice translations count too (P1 included): a P1 box made around a
    molecule with a 5 A margin has no copy within the cutoff, a real P1
    crystal does.
    heavy: bool per atom (None: all).  An image residue with a heavy atom on
    a model heavy atom or on one of an image already taken is left out: a
    residue on a special position maps onto itself (its hydrogens need not),
    and several operators can give the same copy.
    """
    n = len(sites)
    empty = (SymmetryImages(), [])
    if crystal_symmetry is None or crystal_symmetry.unit_cell() is None \
            or crystal_symmetry.space_group_info() is None or n == 0:
        return empty
    uc = crystal_symmetry.unit_cell()
    sg = crystal_symmetry.space_group()
    orth = np.array(uc.orthogonalization_matrix()).reshape(3, 3)
    frac = np.array(uc.fractionalization_matrix()).reshape(3, 3)
    f = sites @ frac.T
    tree = cKDTree(sites)
    heavy = np.ones(n, dtype=bool) if heavy is None else np.asarray(heavy, dtype=bool)
    heavy_tree = cKDTree(sites[heavy]) if heavy.any() else tree
    taken, taken_tree = [], None   # heavy sites of the images taken
    unit_of = np.full(n, -1, dtype=int)
    for k, u in enumerate(units):
        unit_of[u.atoms] = k
    # fractional margin for the cutoff along each axis (reciprocal lengths)
    rec = np.array(uc.reciprocal_parameters()[:3])
    margin = cutoff * rec
    lo, hi = f.min(axis=0) - margin, f.max(axis=0) + margin
    src, rot, tra, new_units = [], [], [], []
    next_index = n
    for op in sg.all_ops():
        r = np.array(op.r().as_double()).reshape(3, 3)
        t = np.array(op.t().as_double())
        g = f @ r.T + t
        glo, ghi = g.min(axis=0), g.max(axis=0)
        # integer shifts that can bring this copy within the margin of the model
        ranges = [range(int(np.floor(lo[a] - ghi[a])), int(np.ceil(hi[a] - glo[a])) + 1)
                  for a in range(3)]
        for s0 in ranges[0]:
            for s1 in ranges[1]:
                for s2 in ranges[2]:
                    shift = np.array([s0, s1, s2], dtype=float)
                    if op.is_unit_mx() and not shift.any():
                        continue
                    x = (g + shift) @ orth.T
                    d, _ = tree.query(x, distance_upper_bound=cutoff)
                    near = np.isfinite(d)
                    # an atom on a special position maps onto itself: not an image
                    near &= ~(d < 0.3)
                    if not near.any():
                        continue
                    r_cart = orth @ r @ frac
                    t_cart = orth @ (t + shift)
                    chosen = set(int(k) for k in np.unique(unit_of[near]) if k >= 0)
                    if unit_neighbours:
                        for k in list(chosen):
                            chosen.update(unit_neighbours.get(k, ()))
                    new_taken = []
                    for k in sorted(chosen):
                        ids = units[k].atoms
                        xs = x[ids][heavy[ids]] if heavy[ids].any() else x[ids]
                        # skip residues whose image coincides with the model or
                        # with an image already taken
                        if np.any(heavy_tree.query(xs)[0] < 0.3):
                            continue
                        if taken_tree is not None and np.any(taken_tree.query(xs)[0] < 0.3):
                            continue
                        if any(np.any(np.linalg.norm(xs[:, None] - y[None], axis=2) < 0.3)
                               for y in new_taken):
                            continue
                        new_taken.append(xs)
                        src.append(ids)
                        rot.append(np.repeat(r_cart[None], len(ids), axis=0))
                        tra.append(np.repeat(t_cart[None], len(ids), axis=0))
                        new_units.append(Unit(
                            label="%s (symmetry %s %+d%+d%+d)" % (
                                units[k].label, op.as_xyz(), s0, s1, s2),
                            atoms=np.arange(next_index, next_index + len(ids)),
                            charge=units[k].charge, source=k))
                        next_index += len(ids)
                    if new_taken:
                        taken.extend(new_taken)
                        taken_tree = cKDTree(np.vstack(taken))
    if not src:
        return empty
    images = SymmetryImages(source=np.concatenate(src), rotation=np.concatenate(rot),
                            translation=np.concatenate(tra))
    return images, new_units

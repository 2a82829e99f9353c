"""A QM region cut out of a model: selected atoms plus hydrogen caps.

Each covalent bond from a selected atom A to an unselected atom B is replaced
by a hydrogen cap on the A-B line at a fixed A-H distance:

    r_H = r_A + d * u,   u = (r_B - r_A) / |r_B - r_A|

The cap has no coordinates of its own, so its gradient is passed to the real
atoms by the chain rule of that placement (exact, so energy and gradient stay
consistent for the minimiser's line search):

    dE/dr_A += g_H - (d/|r_B - r_A|) P g_H,   dE/dr_B += (d/|r_B - r_A|) P g_H,
    P = I - u u^T.

An unselected atom bonded to two or more selected atoms would get two caps in
nearly the same place; such atoms are added to the region instead.

QM selections (`qm_restraints.selection`) are cut only at single bonds
between two sp3 carbons (`move_cuts_to_sp3_carbons`): a C-H cap on an sp3
carbon stands in for the carbon it replaces with the same hybridisation, so
no cap sits on a polar, conjugated or partial double bond (a peptide C-N
cap turns the amide into an amine).  An sp3 carbon is a carbon with four
bonded neighbours (QM models carry their hydrogens).  Every other cut bond
is moved outwards: the outside atom joins the region, up to
MAX_CUT_SHIFT bonds beyond the selection; beyond that the selection is
refused.  A protein backbone has no such bond (N-CA, CA-C and C-N all
involve an sp2 carbon or a nitrogen), so a backbone segment is refused
unless its chain ends are within reach; side chains cut at CA-CB work.
Fragments (qr_phenix.fragmentation) build their own regions and do not use
this rule.
"""

from dataclasses import dataclass, field
from typing import List, Tuple

import numpy as np
from ase.data import atomic_numbers, covalent_radii
from libtbx.utils import Sorry
from scipy.spatial import cKDTree

from qr_phenix.chemistry import XH_DISTANCE

BOND_TOLERANCE = 0.45  # A over the sum of covalent radii for distance-based bonds
MAX_CUT_SHIFT = 5      # bonds a selection boundary may move outwards (Tyr OH to CB)


def covalent_bonds(elements, sites, extra_pairs=()):
    """Bonds by covalent radii (+tolerance), plus given pairs (library bonds),
    as sorted (i, j) tuples with i < j.

    The library knows every bond of residues with a dictionary; distances
    catch ligands without one and links the library did not make.
    """
    sites = np.asarray(sites, dtype=float)
    els = [e.capitalize() for e in elements]
    radii = np.array([covalent_radii[atomic_numbers.get(e, 0)] for e in els])
    is_h = np.array([e in ("H", "D") for e in els], dtype=bool)
    pairs = np.zeros((0, 2), dtype=int)
    if len(sites) > 1:
        pairs = cKDTree(sites).query_pairs(r=2 * radii.max() + BOND_TOLERANCE,
                                           output_type="ndarray")
        i, j = pairs[:, 0], pairs[:, 1]
        d = np.linalg.norm(sites[i] - sites[j], axis=1)
        pairs = pairs[(d < radii[i] + radii[j] + BOND_TOLERANCE) & ~(is_h[i] & is_h[j])]
    bonds = {(int(min(i, j)), int(max(i, j))) for i, j in pairs}
    bonds.update((int(min(i, j)), int(max(i, j))) for i, j in extra_pairs)
    return sorted(bonds)


@dataclass
class Cap:
    inner: int      # model index of the kept atom A
    outer: int      # model index of the replaced atom B
    distance: float


@dataclass
class QMRegion:
    """Model atoms (indices) that a quantum engine sees, with their caps."""

    atoms: np.ndarray                    # model i_seqs, sorted
    elements: List[str]                  # of the region's real atoms
    caps: List[Cap] = field(default_factory=list)
    added_atoms: List[int] = field(default_factory=list)  # auto-added to the selection

    @property
    def n_atoms(self):
        return len(self.atoms) + len(self.caps)

    @property
    def symbols(self):
        return list(self.elements) + ["H"] * len(self.caps)

    def positions(self, sites_cart):
        """Engine coordinates (A): region atoms, then caps."""
        sites = np.asarray(sites_cart, dtype=float)
        real = sites[self.atoms]
        if not self.caps:
            return real
        a = sites[[c.inner for c in self.caps]]
        b = sites[[c.outer for c in self.caps]]
        d = np.array([c.distance for c in self.caps])[:, None]
        v = b - a
        u = v / np.linalg.norm(v, axis=1)[:, None]
        return np.vstack([real, a + d * u])

    def gradient_to_model(self, region_gradient, sites_cart, n_model):
        """Scatter the engine gradient (region atoms + caps) onto model atoms."""
        g = np.asarray(region_gradient, dtype=float)
        out = np.zeros((n_model, 3))
        n_real = len(self.atoms)
        out[self.atoms] += g[:n_real]
        if self.caps:
            sites = np.asarray(sites_cart, dtype=float)
            for cap, g_h in zip(self.caps, g[n_real:]):
                v = sites[cap.outer] - sites[cap.inner]
                norm = np.linalg.norm(v)
                u = v / norm
                p_g = (g_h - u * np.dot(u, g_h)) * (cap.distance / norm)
                out[cap.inner] += g_h - p_g
                out[cap.outer] += p_g
        return out


def _neighbours(bonds):
    neighbours = {}
    for i, j in bonds:
        neighbours.setdefault(i, []).append(j)
        neighbours.setdefault(j, []).append(i)
    return neighbours


def _close(sel, neighbours, is_h):
    """Grow `sel` in place: hydrogens go with their heavy atom (never cap or
    cut at an H), and an outside atom bonded to 2+ region atoms joins (rings,
    branches).  Returns the atoms added."""
    added = []
    while True:
        grow = [k for k in np.flatnonzero(~sel)
                if any(sel[n] and (is_h[k] or is_h[n]) for n in neighbours.get(k, ()))
                or sum(sel[n] for n in neighbours.get(k, ())) >= 2]
        if not grow:
            return added
        sel[grow] = True
        added.extend(int(k) for k in grow)


def move_cuts_to_sp3_carbons(selection, elements, bonds, labels=None,
                             max_shift=MAX_CUT_SHIFT):
    """The selection grown until every bond it cuts joins two sp3 carbons
    (see module doc).  Returns (bool selection, sorted indices of the atoms
    the rule added; hydrogens that merely follow their selected heavy atom
    are not listed).  labels: atom names for the message (model indices
    otherwise)."""
    sel = np.array(selection, dtype=bool)
    elements = [e.capitalize() for e in elements]
    neighbours = _neighbours(bonds)
    is_h = np.array([e in ("H", "D") for e in elements])
    start = sel.copy()
    _close(start, neighbours, is_h)
    sp3_carbon = np.array([e == "C" and len(neighbours.get(i, ())) == 4
                           for i, e in enumerate(elements)])
    name = (lambda i: labels[i]) if labels is not None else (lambda i: "atom %d" % (i + 1))
    first_bad = None
    for step in range(max_shift + 1):
        _close(sel, neighbours, is_h)
        bad = [(int(i), int(j)) for i in np.flatnonzero(sel) for j in neighbours.get(i, ())
               if not sel[j] and not (sp3_carbon[i] and sp3_carbon[j])]
        if not bad:
            return sel, [int(k) for k in np.flatnonzero(sel & ~start)]
        first_bad = first_bad or bad[0]
        if step == max_shift:
            break
        sel[[j for _, j in bad]] = True
    i, j = first_bad
    raise Sorry("qm_restraints.selection cuts the bond %s - %s, and no single bond between"
                " sp3 carbons lies within %d bonds to move the cut to (a protein backbone has"
                " none); select whole side chains or ligands (e.g. 'resseq 32 and sidechain"
                " and not element H', cut at CA-CB) or refine the whole model."
                % (name(i), name(j), max_shift))


def build_region(selection, elements, bonds, log=None) -> QMRegion:
    """Region from a boolean selection over model atoms and the bond list."""
    sel = np.array(selection, dtype=bool)
    if not sel.any():
        raise Sorry("The QM selection selects no atoms: check qm_restraints.selection.")
    elements = [e.capitalize() for e in elements]
    neighbours = _neighbours(bonds)
    is_h = np.array([e.upper() in ("H", "D") for e in elements])
    added = _close(sel, neighbours, is_h)
    caps = []
    for i in np.flatnonzero(sel):
        for j in neighbours.get(i, ()):
            if sel[j]:
                continue
            distance = XH_DISTANCE.get(elements[i].capitalize())
            if distance is None:
                raise Sorry("The QM selection boundary cuts a bond at a %s atom, which"
                            " cannot be capped with hydrogen; move the boundary to a"
                            " C-C or C-N single bond." % elements[i])
            caps.append(Cap(inner=int(i), outer=int(j), distance=distance))
    atoms = np.flatnonzero(sel)
    if log is not None and added:
        print("  QM region: added %d atom(s) bonded to the region on two sides"
              % len(added), file=log)
    return QMRegion(atoms=atoms, elements=[elements[i] for i in atoms], caps=caps,
                    added_atoms=added)

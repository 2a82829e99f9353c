"""Split a model into QM fragments: a core of units plus a buffer around it.

Units are chemical groups (amino acids cut at N-CA, CA-C and CA-CB into an
N-H/C=O peptide group, CA and side chain; ligands, waters and ions whole) or,
with split_residues=False, whole residues (qr_phenix/chemical_groups.py).  Every atom is *core* in exactly
one fragment, and its gradient is taken from that fragment.  A fragment is its
core units plus every unit with a heavy atom within `buffer_radius` of a core
heavy atom; bonds cut at the buffer edge are capped with hydrogen by
`qr_phenix.qm_region.build_region`.

Cores are made by recursive coordinate bisection of unit centres
(weighted by atom count) until each part holds at most `core_size` atoms:
compact, deterministic, O(N log N).  Neighbour searches use scipy's k-d tree,
so setting up a 5000-atom model takes about a second and grows linearly.

Crystal symmetry: for a non-P1 cell (or any cell with periodic neighbours),
residues of symmetry copies within the buffer distance of the model are added
as *images*.  An image atom's position is a fixed affine function of its
source atom's position (x' = R x + t, Cartesian), so it moves with the model
and needs no gradient of its own: images are only ever buffer atoms, and only
core gradients are used.

Indices: 0..n-1 are the model's atoms, n..n+m-1 the images ("extended"
indexing; `Partition.extended_sites(sites)` gives their coordinates).
"""

import sys
import time
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
from ase.data import atomic_numbers
from libtbx.utils import Sorry
from scipy.spatial import cKDTree

from qr_phenix import chemistry
from qr_phenix.chemical_groups import SymmetryImages, Unit, model_units, symmetry_images
from qr_phenix.qm_region import BOND_TOLERANCE, Cap, QMRegion, build_region, covalent_bonds

#: elements never bonded covalently for capping purposes: cutting a
#: metal-ligand contact needs no cap (and an H on a metal would be wrong)
METALS = {
    "Li", "Na", "K", "Rb", "Cs", "Be", "Mg", "Ca", "Sr", "Ba", "Al", "Ga", "In",
    "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Y", "Zr", "Mo",
    "Ru", "Rh", "Pd", "Ag", "Cd", "W", "Re", "Os", "Ir", "Pt", "Au", "Hg", "Pb",
    "La", "Ce", "Gd", "Yb", "Tb", "Eu", "Sm", "U",
}




@dataclass
class Fragment:
    index: int
    core: np.ndarray        # model indices whose gradient this fragment gives
    region: QMRegion        # extended indices; atoms sorted, then H caps
    units: np.ndarray       # unit indices in the fragment
    charge: int
    multiplicity: int = 1

    @property
    def n_atoms(self):
        return self.region.n_atoms

    @property
    def symbols(self):
        return self.region.symbols


@dataclass
class Partition:
    fragments: List[Fragment]
    units: List[Unit]
    n_atoms: int
    elements: List[str]          # extended
    images: SymmetryImages
    reference_sites: np.ndarray  # model sites the partition was built for
    seconds: float = 0.0

    def extended_sites(self, sites):
        sites = np.asarray(sites, dtype=float).reshape(-1, 3)
        if len(self.images) == 0:
            return sites
        return np.vstack([sites, self.images.sites(sites)])

    def max_displacement(self, sites):
        """Largest heavy-atom move since the partition was built.  Cores and
        buffers are chosen by heavy-atom distances and hydrogens go with their
        heavy atom, so a rotating OH, NH3+ or water H changes nothing; counting
        it rebuilt 1va7's fragments within a QM cycle and every fragment lost
        its wavefunction restart (9 -> 12.6 s per gradient)."""
        d = np.asarray(sites, dtype=float).reshape(-1, 3) - self.reference_sites
        heavy = np.array([e not in ("H", "D") for e in self.elements[:len(d)]], dtype=bool)
        d = d[heavy] if heavy.any() else d
        return float(np.sqrt((d * d).sum(axis=1).max())) if len(d) else 0.0

    def show(self, log=sys.stdout, prefix="  "):
        sizes = np.array([f.n_atoms for f in self.fragments])
        cores = np.array([len(f.core) for f in self.fragments])
        charged = sum(1 for f in self.fragments if f.charge)
        print("%sfragments: %d for %d atoms (+%d symmetry-image atoms); core atoms"
              " %d-%d (mean %.0f); fragment atoms with caps %d-%d (mean %.0f);"
              " %d charged; set up in %.2f s"
              % (prefix, len(self.fragments), self.n_atoms, len(self.images),
                 cores.min(), cores.max(), cores.mean(), sizes.min(), sizes.max(),
                 sizes.mean(), charged, self.seconds), file=log)


# --- bonds ----------------------------------------------------------------------------

def fast_covalent_bonds(elements, sites, extra_pairs=()):
    """qm_region.covalent_bonds without bonds to metals (see METALS), as an
    (n, 2) array."""
    els = [e.capitalize() for e in elements]
    metal = np.array([e in METALS for e in els], dtype=bool)
    bonds = np.array(covalent_bonds(els, sites, extra_pairs), dtype=int).reshape(-1, 2)
    return bonds[~(metal[bonds[:, 0]] | metal[bonds[:, 1]])]


# --- residues and charges ---------------------------------------------------------------

# --- cores -------------------------------------------------------------------------------

def bisect_cores(centres, weights, core_size):
    """Recursive coordinate bisection: lists of unit indices, each with total
    weight <= core_size (a single heavier unit stays alone)."""
    result = []
    stack = [np.arange(len(centres))]
    while stack:
        idx = stack.pop()
        if weights[idx].sum() <= core_size or len(idx) == 1:
            result.append(idx)
            continue
        c = centres[idx]
        axis = int(np.argmax(c.max(axis=0) - c.min(axis=0)))
        order = idx[np.argsort(c[:, axis], kind="stable")]
        cum = np.cumsum(weights[order])
        # split at the weighted median, into parts that are multiples of the
        # target where possible (fewer, fuller cores)
        total = cum[-1]
        n_parts = int(np.ceil(total / core_size))
        target = core_size * (n_parts // 2) if n_parts > 1 else total / 2
        cut = int(np.searchsorted(cum, target, side="right"))
        cut = min(max(cut, 1), len(order) - 1)
        stack.append(order[cut:])
        stack.append(order[:cut])
    return result


# --- the partition -------------------------------------------------------------------------

def build_partition(hierarchy, sites, crystal_symmetry=None, core_size=40,
                    buffer_radius=3.5, include_symmetry=True, library_bonds=(),
                    units=None, split_residues=True, log=None):
    """Partition for the model at `sites` (n, 3): cores, buffers, caps, charges."""
    t0 = time.perf_counter()
    sites = np.asarray(sites, dtype=float).reshape(-1, 3)
    n = len(sites)
    elements = [chemistry._element(a) for a in hierarchy.atoms()]
    if units is None:
        units = model_units(hierarchy, log=log, split_residues=split_residues)
    units = list(units)
    covered = np.zeros(n, dtype=int)
    for u in units:
        covered[u.atoms] += 1
    if (covered != 1).any():
        raise Sorry("Fragmentation needs every atom in exactly one residue (one"
                    " conformer): remove alternative conformations first.")
    images, image_units = (SymmetryImages(), [])
    if include_symmetry and buffer_radius > 0:
        unit_of_real = np.empty(n, dtype=int)
        for k, u in enumerate(units):
            unit_of_real[u.atoms] = k
        real_bonds = fast_covalent_bonds(elements, sites, extra_pairs=library_bonds)
        unit_neighbours = {}
        for a, b in unit_of_real[real_bonds] if len(real_bonds) else ():
            if a != b:
                unit_neighbours.setdefault(int(a), set()).add(int(b))
                unit_neighbours.setdefault(int(b), set()).add(int(a))
        images, image_units = symmetry_images(sites, units, crystal_symmetry,
                                              buffer_radius + 3.0, unit_neighbours,
                                              heavy=[e not in ("H", "D") for e in elements])
    ext_elements = elements + [elements[i] for i in images.source]
    all_units = units + image_units
    ext_sites = sites if len(images) == 0 else np.vstack([sites, images.sites(sites)])
    n_ext = len(ext_sites)
    unit_of = np.empty(n_ext, dtype=int)
    for k, u in enumerate(all_units):
        unit_of[u.atoms] = k
    bonds = fast_covalent_bonds(ext_elements, ext_sites, extra_pairs=library_bonds)
    # waters bond to nothing outside themselves (a short contact is not a bond)
    water = np.array([all_units[k].label.split()[1] in chemistry.WATER
                      if len(all_units[k].label.split()) > 1 else False
                      for k in range(len(all_units))])
    if len(bonds):
        ua, ub = unit_of[bonds[:, 0]], unit_of[bonds[:, 1]]
        bonds = bonds[(ua == ub) | ~(water[ua] | water[ub])]
    # CSR adjacency (neighbours of i: nbr[ptr[i]:ptr[i+1]]) for the local capping
    a_all = np.concatenate([bonds[:, 0], bonds[:, 1]])
    b_all = np.concatenate([bonds[:, 1], bonds[:, 0]])
    nbr = b_all[np.argsort(a_all, kind="stable")]
    ptr = np.concatenate([[0], np.cumsum(np.bincount(a_all, minlength=n_ext))])

    def neighbours(atoms):
        if len(atoms) == 0:
            return atoms
        return np.concatenate([nbr[ptr[i]:ptr[i + 1]] for i in atoms])

    # cores from model residues only
    centres = np.array([sites[u.atoms].mean(axis=0) for u in units])
    weights = np.array([len(u.atoms) for u in units], dtype=float)
    core_sets = bisect_cores(centres, weights, core_size)
    z = np.array([atomic_numbers.get(e, 0) for e in ext_elements])
    # buffers by heavy-atom distance: hydrogens follow their heavy atom, and
    # H...H contacts would otherwise widen every buffer by about 1 A
    heavy_ext = np.flatnonzero(z > 1)
    tree = cKDTree(ext_sites[heavy_ext])
    fragments = []
    for fi, core_units in enumerate(core_sets):
        core_units = np.sort(core_units)
        core = np.concatenate([units[k].atoms for k in core_units])
        if buffer_radius > 0:
            core_heavy = core[z[core] > 1]
            near = tree.query_ball_point(sites[core_heavy], r=buffer_radius)
            near = heavy_ext[np.unique(np.concatenate(
                [np.asarray(x, dtype=int) for x in near] + [np.zeros(0, dtype=int)]))]
            frag_units = np.union1d(core_units, unit_of[near])
        else:
            frag_units = core_units
        region = None
        for _ in range(5):
            atoms = np.concatenate([all_units[k].atoms for k in frag_units])
            region = _local_region(atoms, ext_elements, neighbours, nbr, ptr)
            if not region.added_atoms:
                break
            # the capping rules pulled in atoms: take their whole residues
            frag_units = np.union1d(frag_units, unit_of[region.added_atoms])
        charge = int(sum(all_units[k].charge for k in frag_units))
        n_el = int(z[region.atoms].sum()) + len(region.caps) - charge
        if n_el % 2:
            raise Sorry(
                "Fragment %d (core %s) has an odd number of electrons (%d at charge %+d):"
                " a residue in it lacks or has an extra hydrogen, or a ligand charge is"
                " missing. Prepare the model (python -m qr_phenix.prepare), or give"
                " ligand charges in the PDB charge column."
                % (fi + 1, ", ".join(all_units[k].label for k in core_units[:4]), n_el,
                   charge))
        fragments.append(Fragment(index=fi, core=np.sort(core), region=region,
                                  units=frag_units, charge=charge))
    part = Partition(fragments=fragments, units=all_units, n_atoms=n, elements=ext_elements,
                     images=images, reference_sites=sites.copy(),
                     seconds=time.perf_counter() - t0)
    if log is not None:
        part.show(log)
    return part


def _local_region(atoms, elements, neighbours, nbr, ptr):
    """build_region on the fragment and two shells of bonded neighbours only
    (linear cost), mapped back to extended indices."""
    atoms = np.unique(atoms)
    shell1 = np.setdiff1d(np.unique(neighbours(atoms)), atoms)
    shell2 = np.setdiff1d(np.unique(neighbours(shell1)), np.union1d(atoms, shell1))
    local = np.concatenate([atoms, shell1, shell2])
    index = {int(g): k for k, g in enumerate(local)}
    local_bonds = []
    for g in local[:len(atoms) + len(shell1)]:
        for h in nbr[ptr[g]:ptr[g + 1]]:
            k = index.get(int(h))
            if k is not None and index[int(g)] < k:
                local_bonds.append((index[int(g)], k))
    sel = np.zeros(len(local), dtype=bool)
    sel[:len(atoms)] = True
    r = build_region(sel, [elements[i] for i in local], local_bonds)
    return QMRegion(
        atoms=local[r.atoms], elements=r.elements,
        caps=[Cap(inner=int(local[c.inner]), outer=int(local[c.outer]),
                  distance=c.distance) for c in r.caps],
        added_atoms=[int(local[k]) for k in r.added_atoms])

"""Quantum-chemical restraints behind cctbx's `energies_sites` interface.

`QMRestraintsManager` is a drop-in for a cctbx geometry restraints manager
(`model.get_restraints_manager().geometry`).  Its `energies_sites` has the
exact cctbx signature and returns a real `cctbx.geometry_restraints.energies`
object, so mmtbx minimisers, weight calculation, monitors and statistics work
unchanged.  What changes is the target and its gradient.

Energy expression (the target T, kcal/mol):

    T = E_lib(model) - E_lib(replaced) + scale * (E_QM(region + caps) - E_0)

E_lib(model) is the library manager's full energy.  E_lib(replaced) is the
sum of the library terms that the QM calculation already counts.  Whole
model: region R = all atoms, no caps.  Selection: R = the selected atoms
(qm_region.py; cuts only at sp3 C-sp3 C bonds), L = the link atoms (the
outside atom B of each cut bond A-B; QM sees a cap H on the A->B line at a
fixed A-H distance instead of B).  A library term is replaced when QM sees
all its atoms with the geometry the term measures:

* bond i-j: i and j in R.  The cut bond A-B stays with the library (the cap
  sits at a fixed distance from A, so QM has no A-B stretch).
* angle, dihedral, chirality, plane: every atom in R or L, the angle vertex,
  both dihedral axis atoms and the chiral centre in R, and the region atom A
  of each link atom in the same term.  These terms measure directions, and
  the cap keeps the direction A->B: an angle X-A-B is QM's X-A-H(cap).
  A term with a link atom in its middle (angle A-B-Y, dihedral X-A-B-Y,
  chirality at B) stays with the library.
* nonbonded i...j and parallelity: all atoms in R.  A contact with a link
  atom stays with the library (B is not where QM's cap is).
* terms with a symmetry operator (a bond, angle or contact to a symmetry
  mate) stay: the engine is not periodic and sees no mates.  So clashes with
  symmetry mates stay restrained in whole-model QM.
* everything else in the library manager (reference-coordinate, NCS, DEN,
  Ramachandran restraints, external energies) stays.

Every library term is so counted once: by the library, or by QM through
region atoms and caps.  E_QM also holds interactions of the caps that have no
library term (a cap H with region atoms); they are part of the QM model.
Whole model from fragments (qr_phenix.fragmentation): buffers hold symmetry
images, so QM sees the mates and T = scale * (E_QM - E_0) alone.

With qm_restraints.oxygen_carbon_repulsion and hydrogen_contact_repulsion
(both default) the QM term is scale * (E_QM - E_0 + E_wall): E_wall, harmonic
walls between O and C, H and H, and C-bound H and O atoms of R closer than
0.88, 0.80 and 0.84 x their library distance (ContactRepulsion below; GFN2
lets the X-ray term push such contacts into what clashscore counts as
clashes), is reported as `contact_repulsion` beside `qm_energy`.

E_0 is the QM energy of the first evaluation: a constant that keeps target
values small (it cancels in gradients, in weights and in line searches).

Units: kcal/mol and kcal/mol/A, like the library terms; `scale` multiplies
the QM energy (1 = physical kcal/mol).

Between `expand_at(x0)` and `end_expansion()` the QM term is answered by a
local model: E_QM and its gradient at x0 plus GFN-FF's curvature about x0
(qm_expansion.py), so a minimiser takes several steps per QM gradient.  A
force field that fails leaves QM to answer every call (`expansion_available`
says why).

The library evaluation is kept in every result (`bond_deviations()`,
`angle_deviations()`, proxy counts, `number_of_restraints`), so reported
geometry is the usual rmsd against the Engh & Huber library even when the
target is a quantum energy.
"""

import sys
import time
import hashlib

import numpy as np
import iotbx.phil
from scipy.spatial import cKDTree
from libtbx.utils import Sorry
from scitbx.array_family import flex
from cctbx import geometry_restraints

from qr_phenix import chemistry
from qr_phenix.engines import get_engine, make_calculator
from qr_phenix.engines.base import EngineSettings, energy_and_gradient
from qr_phenix.engines.settings import (
    ENGINE_OPTIONS_PHIL, engine_phil_str, engine_settings_from_params)
from qr_phenix.monomer_library import library_bond_pairs, library_bonds, library_manager
from qr_phenix.qm_expansion import CURVATURE_SCALE, LocalQMModel
from qr_phenix.qm_region import build_region, covalent_bonds, move_cuts_to_sp3_carbons

#: the force field whose curvature shapes the steps between QM gradients
SHAPE_ENGINE = "gfnff"

# A line search can try a point where two atoms nearly coincide.  Engines
# then fail (MOPAC: "GEOMETRY IN ERROR") or, worse, return a spurious low
# energy (PM7 let a C-terminal O-H collapse to 0.16 A in the 1us0 benchmark).
# No pair in a macromolecular model is shorter than CONTACT_WALL (X-H >= 0.9 A),
# so a steep wall there changes no physical geometry; below CONTACT_FLOOR the
# engine is not called at all and the wall alone answers, so the line search
# backs off instead of the run stopping.
CONTACT_WALL = 0.75            # A
CONTACT_FLOOR = 0.5            # A
WALL_FORCE_CONSTANT = 2000.0   # kcal/mol/A^2


def contact_wall(sites, atoms=None):
    """Wall energy (kcal/mol), gradient (n, 3) and the shortest pair found
    (i, j, d) among `atoms` (all when None) closer than CONTACT_WALL."""
    idx = np.arange(len(sites)) if atoms is None else np.asarray(atoms)
    gradient = np.zeros_like(sites)
    pairs = cKDTree(sites[idx]).query_pairs(CONTACT_WALL, output_type="ndarray")
    if not len(pairs):
        return 0.0, gradient, None
    i, j = idx[pairs[:, 0]], idx[pairs[:, 1]]
    v = sites[i] - sites[j]
    d = np.maximum(np.linalg.norm(v, axis=1), 1e-6)
    energy = WALL_FORCE_CONSTANT * np.sum((CONTACT_WALL - d) ** 2)
    g = (-2 * WALL_FORCE_CONSTANT * (CONTACT_WALL - d) / d)[:, None] * v
    np.add.at(gradient, i, g)
    np.add.at(gradient, j, -g)
    k = int(np.argmin(d))
    return energy, gradient, (int(i[k]), int(j[k]), float(d[k]))

_scope_body = """
restraints = %(restraints)s
  .type = choice
  .help = "Source of geometry restraints: the monomer library (cctbx) or a \
           quantum-chemical energy (qm, for the whole model or a selection)"
  .short_caption = Restraints
%(engine)s
selection = None
  .type = atom_selection
  .help = "QM region; None = whole model. Atoms outside it keep library \
           restraints; cut bonds are capped with hydrogen. Cuts only at \
           single bonds between sp3 carbons (e.g. CA-CB): other cuts move \
           outwards (the log lists the atoms added), a backbone cut is refused."
  .short_caption = QM selection
charge = None
  .type = int
  .help = "Total charge of the QM region; None = from protonation states, \
           termini and ions in the model"
multiplicity = None
  .type = int
  .help = "Spin multiplicity 2S+1; None = 1 (closed shell)"
scale = 1.0
  .type = float
  .help = "Factor on the QM energy (kcal/mol) before it enters the target"
check_hydrogens = True
  .type = bool
  .help = "Refuse QM regions whose residues lack hydrogens"
oxygen_carbon_repulsion = True
  .type = bool
  .help = "Add a harmonic repulsion between O and C atoms that are not \
           bonded, acting below 0.88 x the library's van der Waals distance \
           (2.83 A for a carbonyl O and C), to the QM energy. GFN2 packs \
           carbonyl O(i)...C(i+1) and Asp OD1...C contacts to 2.6-2.7 A, \
           which all-atom clashscore counts as clashes (below 2.75 A)"
  .short_caption = O...C repulsion
hydrogen_contact_repulsion = True
  .type = bool
  .help = "Add harmonic repulsions between H and H atoms below 0.80 x the \
           library's van der Waals distance (1.92 A) and between H bonded \
           to C and O below 0.84 x (2.28 A; polar H...O, H-bonds, is not \
           touched) to the QM energy. Against the X-ray term GFN2 lets \
           methyl H...H contacts close to 1.5-1.6 A and C-H...O to 2.1 A, \
           which all-atom clashscore counts as clashes"
  .short_caption = H...H and C-H...O repulsion
%(engine_options)s"""


def qm_restraints_phil_str(default_restraints="cctbx"):
    """The `qm_restraints` scope; programs choose the default restraint source
    (cctbx for tools that merely offer QM, qm for qr.refine)."""
    choice = " ".join(("*" if r == default_restraints else "") + r for r in ("cctbx", "qm"))
    body = _scope_body % {"restraints": choice, "engine": engine_phil_str(),
                          "engine_options": ENGINE_OPTIONS_PHIL}
    return "qm_restraints\n  .short_caption = Quantum restraints\n{\n%s\n}\n" % body


#: for other cctbx programs: `include scope qr_phenix.restraints_manager.master_phil_str`
master_phil_str = qm_restraints_phil_str()
phil_scope = iotbx.phil.parse(master_phil_str)


# Contact walls on top of QM: harmonic repulsion WALL_STIFFNESS (r0 - r)^2
# kcal/mol between atoms of the library's nonbonded list (not bonded, no
# angle between them; 1-4 pairs have shorter library distances) closer than
# r0 = fraction x their library distance.  Each wall starts ~0.1 A outside
# the distance at which probe2's all-atom clashscore counts the pair (overlap
# 0.4 A), where the QM energy (fragments, implicit water) is too soft to
# stop the X-ray term from pushing the pair in at 3-4 A resolution.
WALL_STIFFNESS = 100.0
# oxygen_carbon_repulsion.  Carbonyl O...C is 3.22 A in the library: the
# wall starts at 2.83 A, probe2 counts a clash below 2.75 A (radii 1.40 +
# 1.75 A), a helix's O(i)...C(i+1) at 2.9-3.0 A is untouched.  GFN2 packs
# such pairs to 2.6-2.7 A: 10 of the 28 clashes of 1va7's QM model, 4 of the
# 7 a geometry-only minimisation of a library chain made.  The library's own
# quartic term (16 (r0 - r)^4) is ~0.01 kcal/mol there.
OC_DISTANCE_FRACTION = 0.88
# hydrogen_contact_repulsion, H...H: 2.40 A in the library, wall from
# 1.92 A; probe2 counted 1va7's QM-model pairs at 1.53-1.80 A as clashes,
# not those at 1.85 A and beyond.  GFN2 costs a head-on CH4 dimer 2.6
# kcal/mol at 1.6 A (MP2/aug-cc-pVDZ 2.1), less than the X-ray term gains
# by pushing methyls together: 5 of the 16 clashes of that model.
HH_DISTANCE_FRACTION = 0.80
# hydrogen_contact_repulsion, C-H...O: 2.72 A in the library (polar H...O,
# 2.12 A, H-bonds, is not walled), wall from 2.28 A; probe2 counted that
# model's pairs at 2.11-2.21 A as clashes (10 of 16).  GFN2 is too soft
# here: CH4...OH2 with C-H pointing at O costs 0.0 / 2.2 kcal/mol at 2.0 /
# 1.8 A, MP2/aug-cc-pVDZ 1.0 / 4.2.
CH_O_DISTANCE_FRACTION = 0.84


def _wall(fraction):
    return geometry_restraints.prolsq_repulsion_function(
        c_rep=WALL_STIFFNESS, k_rep=fraction, irexp=1, rexp=2)


def region_mask(n, region_atoms=None):
    """Boolean mask over n model atoms: the QM region (all when None)."""
    inside = np.zeros(n, dtype=bool)
    inside[slice(None) if region_atoms is None else region_atoms] = True
    return inside


class ContactRepulsion:
    """Contact walls (above) over the library's nonbonded pairs whose both
    atoms are in `inside` (the QM region: the library keeps the other
    contacts), symmetry mates included.  bonds: the library's bonded pairs
    (i, j), which tell an H on C from a polar one.  oxygen_carbon: the O...C
    wall; hydrogens: the H...H and C-H...O walls.  energy(standard,
    sites_cart, gradients) takes the pairs from the library manager
    `standard`, adds its gradient into `gradients` (a vec3_double, or None)
    and returns the energy."""

    OTHER, O, C, H_ON_C, H_OTHER = range(5)   # atom kinds

    def __init__(self, elements, inside, bonds, oxygen_carbon=True, hydrogens=True):
        kind = [{"O": self.O, "C": self.C, "H": self.H_OTHER, "D": self.H_OTHER}.get(
            e, self.OTHER) for e in elements]
        for i, j in bonds:
            for h, partner in ((i, j), (j, i)):
                if kind[h] == self.H_OTHER and elements[partner] == "C":
                    kind[h] = self.H_ON_C
        self.kind = [k if k_in else self.OTHER for k, k_in in zip(kind, inside)]
        # walls: (name, fraction, function); wall_of[kind i][kind j]: index or None
        self.walls = []
        self.wall_of = [[None] * 5 for _ in range(5)]

        def add(name, fraction, kind_pairs):
            for a, b in kind_pairs:
                self.wall_of[a][b] = self.wall_of[b][a] = len(self.walls)
            self.walls.append((name, fraction, _wall(fraction)))

        if oxygen_carbon:
            add("O...C", OC_DISTANCE_FRACTION, [(self.O, self.C)])
        if hydrogens:
            add("H...H", HH_DISTANCE_FRACTION, [(self.H_ON_C, self.H_ON_C),
                                                (self.H_ON_C, self.H_OTHER),
                                                (self.H_OTHER, self.H_OTHER)])
            add("C-H...O", CH_O_DISTANCE_FRACTION, [(self.H_ON_C, self.O)])
        # the pairs picked from the library's pair list, kept while the
        # library keeps that list (it rebuilds it only when atoms moved more
        # than its buffer), so most calls skip the Python loop over ~50k pairs
        self._source = None
        self._pairs = None

    def describe(self):
        """'O...C, H...H, C-H...O repulsion below 0.88, 0.8, 0.84 x library distances'"""
        return "%s repulsion below %s x library distances" % (
            ", ".join(name for name, _, _ in self.walls),
            ", ".join("%g" % fraction for _, fraction, _ in self.walls))

    def _wall_pairs(self, sorted_proxies):
        if sorted_proxies is not self._source:
            kind, wall_of = self.kind, self.wall_of
            pairs = [geometry_restraints.nonbonded_sorted_asu_proxies(
                asu_mappings=sorted_proxies.asu_mappings()) for _ in self.walls]
            for proxy in sorted_proxies.simple:
                i, j = proxy.i_seqs
                w = wall_of[kind[i]][kind[j]]
                if w is not None:
                    pairs[w].process(proxy)
            for proxy in sorted_proxies.asu:
                w = wall_of[kind[proxy.i_seq]][kind[proxy.j_seq]]
                if w is not None:
                    pairs[w].process(proxy)
            self._source, self._pairs = sorted_proxies, pairs
        return self._pairs

    def energy(self, standard, sites_cart, gradients=None):
        pairs = self._wall_pairs(standard.pair_proxies(sites_cart=sites_cart).nonbonded_proxies)
        return sum(geometry_restraints.nonbonded_residual_sum(
            sites_cart=sites_cart, sorted_asu_proxies=p, gradient_array=gradients,
            function=function, disable_cache=True)
            for p, (_, _, function) in zip(pairs, self.walls))


class SingleCalculation:
    """QM evaluator: one engine calculation on the whole model or on a region
    with caps.  An evaluator maps model coordinates (n, 3) to (energy kcal/mol,
    gradient (n, 3) kcal/mol/A); fragment-based evaluators follow the same
    contract (qr_phenix.fragmentation)."""

    def __init__(self, calculator, symbols, region=None):
        self.calculator = calculator
        self.symbols = list(symbols)
        self.region = region

    def energy_and_gradient(self, sites):
        if self.region is None:
            eg = energy_and_gradient(self.calculator, self.symbols, sites)
            return eg.energy, eg.gradient
        eg = energy_and_gradient(self.calculator, self.region.symbols,
                                 self.region.positions(sites))
        return eg.energy, self.region.gradient_to_model(eg.gradient, sites, len(sites))


class ReplacedProxies:
    """The library proxies that QM counts (module doc), on model indices.

    Bonds, angles, dihedrals, chiralities, planes and parallelities depend
    on topology only and are chosen once; nonbonded pairs follow the sites
    and are taken from the library's pair proxies at each evaluation.
    """

    def __init__(self, standard, sites_cart, region_atoms=None, caps=()):
        inside = region_mask(sites_cart.size(), region_atoms)
        self.partner = {c.outer: c.inner for c in caps}   # link atom -> its region atom
        self.inside = inside
        simple = standard.pair_proxies(sites_cart=sites_cart).bond_proxies.simple
        self.bond = self._pick(simple, geometry_restraints.shared_bond_simple_proxy, None)
        self.angle = self._pick(standard.angle_proxies,
                                geometry_restraints.shared_angle_proxy, (1,))
        self.dihedral = self._pick(standard.dihedral_proxies,
                                   geometry_restraints.shared_dihedral_proxy, (1, 2))
        self.chirality = self._pick(standard.chirality_proxies,
                                    geometry_restraints.shared_chirality_proxy, (0,))
        self.planarity = self._pick(standard.planarity_proxies,
                                    geometry_restraints.shared_planarity_proxy, ())
        self.parallelity = geometry_restraints.shared_parallelity_proxy()
        for p in standard.parallelity_proxies or ():
            if getattr(p, "sym_ops", None) is None and \
                    inside[list(p.i_seqs) + list(p.j_seqs)].all():
                self.parallelity.append(p)

    def covered(self, i_seqs, middle):
        """Whether QM counts a term on `i_seqs`: each atom a region atom, or a
        link atom that is at none of the `middle` positions (angle vertex,
        dihedral axis, chiral centre) and whose region atom is in the term.
        middle=None: region atoms only (bonds: a bond to a link atom is the
        cut bond)."""
        i_seqs = [int(i) for i in i_seqs]
        for k, i in enumerate(i_seqs):
            if self.inside[i]:
                continue
            if middle is None or k in middle or self.partner.get(i) not in i_seqs:
                return False
        return True

    def _pick(self, proxies, shared, middle):
        out = shared()
        for p in proxies or ():
            if getattr(p, "sym_ops", None) is None and self.covered(p.i_seqs, middle):
                out.append(p)
        return out

    def energy(self, standard, sites_cart, flags, nonbonded_function, gradients,
               inner_library=None, region_atoms=None):
        """Sum of the replaced terms; their gradient added into `gradients`
        (a vec3_double over the model, or None)."""
        g = gradients
        e = 0.0
        if flags.bond:
            e += geometry_restraints.bond_residual_sum(
                sites_cart=sites_cart, proxies=self.bond, gradient_array=g)
        for flag, proxies, function in (
                (flags.angle, self.angle, geometry_restraints.angle_residual_sum),
                (flags.dihedral, self.dihedral, geometry_restraints.dihedral_residual_sum),
                (flags.chirality, self.chirality, geometry_restraints.chirality_residual_sum),
                (flags.planarity, self.planarity, geometry_restraints.planarity_residual_sum),
                (flags.parallelity, self.parallelity,
                 geometry_restraints.parallelity_residual_sum)):
            if flag and proxies.size():
                e += function(sites_cart=sites_cart, proxies=proxies, gradient_array=g)
        if flags.nonbonded and standard.nonbonded_types is not None:
            if inner_library is None:
                # whole model: every pair without a symmetry operator
                pairs = standard.pair_proxies(
                    flags=flags, sites_cart=sites_cart).nonbonded_proxies.simple
                e += geometry_restraints.nonbonded_residual_sum(
                    sites_cart=sites_cart, proxies=pairs, gradient_array=g,
                    function=nonbonded_function)
            else:
                # pairs inside the region: the library selected to the region
                isel = flex.size_t([int(i) for i in region_atoms])
                region_sites = sites_cart.select(isel)
                pairs = inner_library.pair_proxies(
                    flags=flags, sites_cart=region_sites).nonbonded_proxies.simple
                g_region = None if g is None else flex.vec3_double(isel.size(), (0, 0, 0))
                e += geometry_restraints.nonbonded_residual_sum(
                    sites_cart=region_sites, proxies=pairs, gradient_array=g_region,
                    function=nonbonded_function)
                if g is not None:
                    g_model = np.zeros((g.size(), 3))
                    g_model[np.asarray(region_atoms)] = np.array(g_region)
                    g += flex.vec3_double(g_model)
        return e


class QMRestraintsManager:
    """Drop-in for cctbx.geometry_restraints.manager.manager (see module doc).

    evaluator: object with energy_and_gradient(sites (n,3)) -> (kcal/mol, (n,3)).
    region_atoms: model indices whose internal library terms QM replaces, or
    None for the whole model.
    caps: the region's caps (qm_region.Cap): library terms through a cap's
    link atom that QM counts are replaced too (module doc).
    qm_sees_symmetry: the evaluator includes symmetry mates (fragments with
    images in their buffers); the whole library is then dropped.
    shape_factory: callable -> an evaluator of the force field (for the
    atoms QM sees) whose curvature `expand_at`'s local model borrows
    (qm_expansion.py); built on first use.
    """

    def __init__(self, standard, evaluator, region_atoms=None, n_atoms=None, scale=1.0,
                 engine_name="qm", charge_assignment=None, caps=(),
                 qm_sees_symmetry=False, contact_walls=None, shape_factory=None):
        self.standard = standard
        self.evaluator = evaluator
        self.region_atoms = None if region_atoms is None else np.asarray(region_atoms)
        self.n_atoms = n_atoms
        self.scale = scale
        self.engine_name = engine_name
        self.charge_assignment = charge_assignment
        self.caps = list(caps)
        self.qm_sees_symmetry = qm_sees_symmetry
        # a ContactRepulsion when a wall is on, else None
        self.contact_walls = contact_walls
        self.inner_library = None
        if self.region_atoms is not None:
            self._region_iselection = flex.size_t([int(i) for i in self.region_atoms])
            self.inner_library = standard.select(iselection=self._region_iselection)
        self.replaced = None
        self.energy_reference = None
        self.n_engine_calls = 0
        self.engine_seconds = 0.0
        self._cache_key = None
        self._cache_value = None
        self._last_engine_energy = None
        self.observer = None
        self.shape_factory = shape_factory
        self.shape_error = None
        self.local_model = None
        self._local_active = False

    def set_observer(self, observer):
        """An object told each engine call (`engine_call(seconds)`) and, for
        fragments, each finished fragment (`fragments_done(done, total)`):
        the refinement's cost reporter."""
        self.observer = observer
        if hasattr(self.evaluator, "on_fragment_done"):
            self.evaluator.on_fragment_done = observer.fragments_done if observer else None

    # everything not overridden (pair_proxies, crystal_symmetry, proxies,
    # shift_sites_cart, ...) is the library manager's
    def __getattr__(self, name):
        standard = self.__dict__.get("standard")
        if standard is None:
            raise AttributeError(name)
        return getattr(standard, name)

    def __deepcopy__(self, memo):
        # the engine (a live process or wavefunction) is shared, not copied
        import copy
        new = copy.copy(self)
        new.standard = copy.deepcopy(self.standard, memo)
        return new

    @property
    def is_whole_model(self):
        return self.region_atoms is None

    def select(self, selection=None, iselection=None):
        """All atoms: self.  A subset: the library manager of that subset (the
        QM term is defined for the whole region only, so it is not split)."""
        n = selection.size() if selection is not None else None
        if selection is not None and selection.count(True) == n:
            return self
        if iselection is not None and iselection.size() == self.n_atoms and \
                list(iselection) == list(range(self.n_atoms)):
            return self
        return self.standard.select(selection=selection, iselection=iselection)

    def reset_energy_reference(self):
        self.energy_reference = None

    def expansion_available(self):
        """(True, "") when `expand_at` can be used, else (False, why)."""
        if self.shape_error is not None:
            return False, self.shape_error
        if self.shape_factory is None:
            return False, "no force field for this QM term"
        return get_engine(SHAPE_ENGINE).available(None)

    def _shape_failed(self, error):
        """The force field failed (an atom type GFN-FF cannot handle, a
        crashed process): QM answers every call from here on."""
        self._local_active = False
        self.shape_error = "%s failed: %s" % (SHAPE_ENGINE, str(error).splitlines()[0])

    def expand_at(self, sites_cart):
        """Take a QM gradient at sites_cart and answer later calls from the
        local model about it (qm_expansion.py) until `end_expansion`."""
        self._local_active = False
        energy, gradient = self.qm_energy_and_gradient(sites_cart)
        if self.shape_error is not None:
            return
        # the contact wall is added to the local model's answers, not expanded
        sites = np.array(sites_cart, dtype=float).reshape(-1, 3)
        wall, wall_gradient, _ = contact_wall(sites, self.region_atoms)
        try:
            if self.local_model is None:
                self.local_model = LocalQMModel(
                    self.shape_factory(), CURVATURE_SCALE.get(self.engine_name, 1.0))
            self.local_model.expand_at(sites, energy - wall, gradient - wall_gradient)
        except Exception as e:
            self._shape_failed(e)
            return
        self._local_active = True

    def end_expansion(self):
        self._local_active = False

    def qm_energy_and_gradient(self, sites_cart):
        """QM energy (kcal/mol, absolute) and gradient on model atoms (n, 3).

        Identical coordinates are not recomputed: minimisers ask for a
        target-only value at the point they just evaluated.  Between
        `expand_at` and `end_expansion` the local model answers instead.
        """
        sites = np.array(sites_cart, dtype=float).reshape(-1, 3)
        if self._local_active:
            wall, wall_gradient, _ = contact_wall(sites, self.region_atoms)
            try:
                energy, gradient = self.local_model.energy_and_gradient(sites)
            except Exception as e:
                self._shape_failed(e)
            else:
                return energy + wall, gradient + wall_gradient
        key = hashlib.sha1(sites.tobytes()).hexdigest()
        if key == self._cache_key:
            return self._cache_value
        wall, wall_gradient, closest = contact_wall(sites, self.region_atoms)
        if closest is not None and closest[2] < CONTACT_FLOOR:
            if self._last_engine_energy is None:
                raise Sorry("Atoms %d and %d (from 1) are %.2f A apart: the model has"
                            " overlapping atoms. Fix or remove one of them before QM"
                            " refinement." % (closest[0] + 1, closest[1] + 1, closest[2]))
            # the engine is not asked; the wall alone makes this point worse
            # than the last one, so the line search returns
            return self._last_engine_energy + wall, wall_gradient
        t0 = time.perf_counter()
        energy, gradient = self.evaluator.energy_and_gradient(sites)
        seconds = time.perf_counter() - t0
        self.engine_seconds += seconds
        self.n_engine_calls += 1
        if self.observer is not None:
            self.observer.engine_call(seconds)
        self._last_engine_energy = energy
        self._cache_key, self._cache_value = key, (energy + wall, gradient + wall_gradient)
        return self._cache_value

    def energies_sites(self, sites_cart, flags=None, custom_nonbonded_function=None,
                       compute_gradients=False, gradients=None, disable_asu_cache=False,
                       normalization=False, external_energy_function=None,
                       extension_objects=[], site_labels=None):
        # the library pass gives a real energies object (statistics, counts);
        # with fragments (QM sees the mates) its energy is reported, not used
        library_unused = self.region_atoms is None and self.qm_sees_symmetry
        result = self.standard.energies_sites(
            sites_cart=sites_cart, flags=flags,
            custom_nonbonded_function=custom_nonbonded_function,
            compute_gradients=compute_gradients and not library_unused,
            gradients=None if library_unused else gradients,
            disable_asu_cache=disable_asu_cache, normalization=False,
            external_energy_function=external_energy_function,
            extension_objects=extension_objects, site_labels=site_labels)
        result.library_residual_sum = result.residual_sum
        if library_unused:
            result.residual_sum = 0.0
            if compute_gradients:
                result.compute_gradients = True
                if gradients is None:
                    gradients = flex.vec3_double(sites_cart.size(), (0, 0, 0))
                result.gradients = gradients
        else:
            if self.replaced is None:
                self.replaced = ReplacedProxies(self.standard, sites_cart,
                                                self.region_atoms, self.caps)
            g = flex.vec3_double(sites_cart.size(), (0, 0, 0)) if compute_gradients else None
            if flags is None:
                flags = geometry_restraints.flags.flags(default=True)
            nonbonded_function = (self.standard.nonbonded_function if custom_nonbonded_function
                                  is None else custom_nonbonded_function)
            result.residual_sum -= self.replaced.energy(
                self.standard, sites_cart, flags, nonbonded_function, g,
                inner_library=self.inner_library, region_atoms=self.region_atoms)
            if compute_gradients:
                result.gradients += flex.vec3_double(-np.array(g))
        result.library_target = result.residual_sum
        energy, gradient = self.qm_energy_and_gradient(sites_cart)
        if self.energy_reference is None:
            self.energy_reference = energy
        result.qm_energy = energy
        result.contact_repulsion = 0.0
        if self.contact_walls is not None:
            # part of the QM model's energy, so it takes the QM scale too
            g_wall = flex.vec3_double(sites_cart.size(), (0, 0, 0)) if compute_gradients else None
            result.contact_repulsion = self.contact_walls.energy(
                self.standard, sites_cart, g_wall)
            if compute_gradients:
                gradient = gradient + np.array(g_wall)
        result.qm_target = self.scale * (energy - self.energy_reference
                                         + result.contact_repulsion)
        result.residual_sum += result.qm_target
        if compute_gradients:
            result.gradients += flex.vec3_double(self.scale * gradient)
        result.normalization = normalization
        result.finalize_target_and_gradients()
        return result

    def show_summary(self, log=sys.stdout, prefix="  "):
        if self.region_atoms is None:
            what = "whole model, %d atoms" % self.n_atoms
        else:
            caps = getattr(getattr(self.evaluator, "region", None), "caps", ())
            what = "selection: %d atoms + %d H caps; library restraints for the other %d" % (
                len(self.region_atoms), len(caps), self.n_atoms - len(self.region_atoms))
        print("%sQM restraints: engine %s, %s, scale %g%s" % (
            prefix, self.engine_name, what, self.scale,
            "; " + self.contact_walls.describe()
            if self.contact_walls is not None else ""), file=log)
        if self.charge_assignment is not None:
            self.charge_assignment.show(log, prefix=prefix + "  ")


def model_bonds(model, elements=None):
    """Covalent bonds of a processed model: library bond proxies + distances."""
    sites = np.array(model.get_sites_cart())
    if elements is None:
        elements = [chemistry._element(a) for a in model.get_hierarchy().atoms()]
    return covalent_bonds(elements, sites, extra_pairs=library_bond_pairs(model))


def _atoms_by_residue(hierarchy, i_seqs):
    """'A LYS 32: CB HB2 HB3' lines for the given atoms."""
    atoms = hierarchy.atoms()
    lines = {}
    for i in i_seqs:
        a = atoms[i]
        ag = a.parent()
        key = "%s %s %s" % (ag.parent().parent().id.strip(), ag.resname.strip(),
                            ag.parent().resseq.strip())
        lines.setdefault(key, []).append(a.name.strip())
    return ["%s: %s" % (k, " ".join(v)) for k, v in lines.items()]


def build_qm_manager(model, params, log=sys.stdout, fragment_params=None,
                     parallel_params=None):
    """QMRestraintsManager for a processed mmtbx model and a `qm_restraints`
    extract.  The model keeps its library manager; install with `install`.

    fragment_params/parallel_params: the `fragments` and `parallel` extracts
    (qr_phenix.fragmentation.master_phil_str); with fragments on, the QM
    energy of the whole model is assembled from fragments.
    """
    from qr_phenix.engines import ENGINES
    standard = library_manager(model)
    hierarchy = model.get_hierarchy()
    n = hierarchy.atoms_size()
    elements = [chemistry._element(a) for a in hierarchy.atoms()]
    chemistry.check_single_conformer(hierarchy)
    region = None
    selection = None
    if params.selection is not None:
        sel = np.array(model.selection(params.selection))
        if not sel.any():
            raise Sorry("qm_restraints.selection=%r selects no atoms." % params.selection)
        if sel.sum() < n:
            bonds = model_bonds(model, elements)
            labels = ["%s %s %s %s" % (a.chain().id.strip(), a.parent().resname.strip(),
                                       a.parent().parent().resseq.strip(), a.name.strip())
                      for a in hierarchy.atoms()]
            sel, added = move_cuts_to_sp3_carbons(sel, elements, bonds, labels)
            if added and log is not None:
                print("  QM selection grown by %d atom(s) so that every cut bond joins two"
                      " sp3 carbons:" % len(added), file=log)
                for line in _atoms_by_residue(hierarchy, added):
                    print("    " + line, file=log)
        if sel.sum() < n:
            region = build_region(sel, elements, bonds, log=log)
            selection = np.zeros(n, dtype=bool)
            selection[region.atoms] = True
    if params.check_hydrogens:
        chemistry.check_hydrogens(hierarchy, selection)
    walls = None
    if params.oxygen_carbon_repulsion or params.hydrogen_contact_repulsion:
        walls = ContactRepulsion(elements, region_mask(n, None if region is None else region.atoms),
                                 library_bond_pairs(model),
                                 oxygen_carbon=params.oxygen_carbon_repulsion,
                                 hydrogens=params.hydrogen_contact_repulsion)
    if fragment_params is not None:
        from qr_phenix import fragmentation
        if fragmentation.fragments_enabled(fragment_params, n, params.selection):
            evaluator = fragmentation.build_fragment_evaluator(
                model, params, fragment_params, parallel_params, log=log)
            return QMRestraintsManager(
                standard=standard, evaluator=evaluator, n_atoms=n, scale=params.scale,
                engine_name=params.engine, qm_sees_symmetry=True, contact_walls=walls,
                shape_factory=lambda: evaluator.sibling(shape_settings(evaluator.settings)))
    cap_elements = ["H"] * (len(region.caps) if region is not None else 0)
    charges = chemistry.assign_charge_and_multiplicity(
        hierarchy, selection, charge=params.charge, multiplicity=params.multiplicity,
        extra_elements=cap_elements)
    if params.engine not in ENGINES:
        raise Sorry("Unknown QM engine %r; choose one of: %s"
                    % (params.engine, ", ".join(ENGINES)))
    settings = engine_settings_from_params(params, charges.charge, charges.multiplicity)
    if log is not None:
        print("  QM solvent: %s" % ("implicit %s" % settings.solvent if settings.solvent
                                    else "vacuum"), file=log)
    evaluator = SingleCalculation(make_calculator(settings), elements, region)
    return QMRestraintsManager(
        standard=standard, evaluator=evaluator,
        region_atoms=None if region is None else region.atoms, n_atoms=n,
        scale=params.scale, engine_name=params.engine, charge_assignment=charges,
        caps=() if region is None else region.caps, contact_walls=walls,
        shape_factory=lambda: SingleCalculation(
            make_calculator(shape_settings(settings)), elements, region))


def shape_settings(settings):
    """The force field of qm_expansion.py for what `settings` computes: the
    same atoms, charge and implicit solvent."""
    return EngineSettings(name=SHAPE_ENGINE, charge=settings.charge,
                          multiplicity=settings.multiplicity, solvent=settings.solvent)


def install(model, manager):
    """Make `manager` the model's geometry restraints (what mmtbx drivers use)."""
    model.get_restraints_manager().geometry = manager
    return model


def setup_restraints(model, params, log=sys.stdout, fragment_params=None,
                     parallel_params=None):
    """Apply a `qm_restraints` extract to a processed model; returns the model's
    geometry manager (library or QM)."""
    if params.restraints == "qm":
        manager = build_qm_manager(model, params, log=log, fragment_params=fragment_params,
                                   parallel_params=parallel_params)
        manager.show_summary(log)
        install(model, manager)
    return model.get_restraints_manager().geometry


def residues_without_restraints(model):
    """Labels of residues (2+ atoms) with no library bond: no dictionary."""
    bonded = np.zeros(model.get_number_of_atoms(), dtype=bool)
    bonded[library_bonds(model)[0].ravel()] = True
    result = []
    for rg in model.get_hierarchy().residue_groups():
        i_seqs = [a.i_seq for a in rg.atoms()]
        if len(i_seqs) > 1 and not bonded[i_seqs].any():
            result.append((rg.parent().id.strip() + " " + rg.atom_groups()[0].resname.strip()
                           + " " + rg.resseq.strip(), i_seqs))
    return result


def check_unrestrained_residues(model, selection):
    """Residues without a dictionary must lie inside the QM region."""
    missing = residues_without_restraints(model)
    if not missing:
        return
    if selection is None:
        return  # whole model is QM
    sel = np.array(model.selection(selection))
    outside = [label for label, i_seqs in missing if not sel[i_seqs].all()]
    if outside:
        raise Sorry(
            "No restraint dictionary for %s, and not (entirely) inside"
            " qm_restraints.selection. Either add these residues to the QM selection"
            " (QM needs no dictionary), or supply a CIF dictionary for them."
            % ", ".join(outside))

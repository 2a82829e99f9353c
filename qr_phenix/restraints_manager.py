"""Quantum-chemical restraints behind cctbx's `energies_sites` interface.

`QMRestraintsManager` is a drop-in for a cctbx geometry restraints manager
(`model.get_restraints_manager().geometry`).  Its `energies_sites` has the
exact cctbx signature and returns a real `cctbx.geometry_restraints.energies`
object, so mmtbx minimisers, weight calculation, monitors and statistics work
unchanged.  What changes is the target and its gradient:

* whole model (`selection=None`):  T = scale * (E_QM(model) - E_0)
* QM selection:  T = E_lib(model) - E_lib(region) + scale * (E_QM(region+caps) - E_0)

E_lib(region) is the library energy of the region's atoms alone (the library
manager `select()`-ed to the region), so every bond, angle, torsion, plane,
chirality and nonbonded term with all its atoms inside the region is counted
once, by QM, and every term that reaches outside stays with the library.
E_0 is the QM energy of the first evaluation: a constant that keeps target
values small (it cancels in gradients, in weights and in line searches).

Units: kcal/mol and kcal/mol/A, like the library terms; `scale` multiplies
the QM energy (1 = physical kcal/mol).

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

from qr_phenix import chemistry
from qr_phenix.engines import make_calculator
from qr_phenix.engines.base import energy_and_gradient
from qr_phenix.engines.settings import (
    ENGINE_OPTIONS_PHIL, engine_phil_str, engine_settings_from_params)
from qr_phenix.monomer_library import library_bond_pairs, library_bonds, library_manager
from qr_phenix.qm_region import build_region, covalent_bonds

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
           restraints; cut bonds are capped with hydrogen."
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


class QMRestraintsManager:
    """Drop-in for cctbx.geometry_restraints.manager.manager (see module doc).

    evaluator: object with energy_and_gradient(sites (n,3)) -> (kcal/mol, (n,3)).
    region_atoms: model indices whose internal library terms QM replaces, or
    None for the whole model.
    """

    def __init__(self, standard, evaluator, region_atoms=None, n_atoms=None, scale=1.0,
                 engine_name="qm", charge_assignment=None):
        self.standard = standard
        self.evaluator = evaluator
        self.region_atoms = None if region_atoms is None else np.asarray(region_atoms)
        self.n_atoms = n_atoms
        self.scale = scale
        self.engine_name = engine_name
        self.charge_assignment = charge_assignment
        self.inner_library = None
        if self.region_atoms is not None:
            self._region_iselection = flex.size_t([int(i) for i in self.region_atoms])
            self.inner_library = standard.select(iselection=self._region_iselection)
        self.energy_reference = None
        self.n_engine_calls = 0
        self.engine_seconds = 0.0
        self._cache_key = None
        self._cache_value = None
        self._last_engine_energy = None
        self.observer = None

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

    def qm_energy_and_gradient(self, sites_cart):
        """QM energy (kcal/mol, absolute) and gradient on model atoms (n, 3).

        Identical coordinates are not recomputed: minimisers ask for a
        target-only value at the point they just evaluated.
        """
        sites = np.array(sites_cart, dtype=float).reshape(-1, 3)
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
        whole = self.region_atoms is None
        # the library pass gives a real energies object (statistics, counts);
        # in whole-model mode its energy is reported but not used
        result = self.standard.energies_sites(
            sites_cart=sites_cart, flags=flags,
            custom_nonbonded_function=custom_nonbonded_function,
            compute_gradients=compute_gradients and not whole,
            gradients=None if whole else gradients,
            disable_asu_cache=disable_asu_cache, normalization=False,
            external_energy_function=external_energy_function,
            extension_objects=extension_objects, site_labels=site_labels)
        result.library_residual_sum = result.residual_sum
        if whole:
            result.residual_sum = 0.0
            if compute_gradients:
                result.compute_gradients = True
                if gradients is None:
                    gradients = flex.vec3_double(sites_cart.size(), (0, 0, 0))
                result.gradients = gradients
        else:
            inner = self.inner_library.energies_sites(
                sites_cart=sites_cart.select(self._region_iselection),
                flags=flags, custom_nonbonded_function=custom_nonbonded_function,
                compute_gradients=compute_gradients, normalization=False)
            result.residual_sum -= inner.residual_sum
            if compute_gradients:
                g_inner = np.zeros((sites_cart.size(), 3))
                g_inner[self.region_atoms] = np.array(inner.gradients)
                result.gradients += flex.vec3_double(-g_inner)
        energy, gradient = self.qm_energy_and_gradient(sites_cart)
        if self.energy_reference is None:
            self.energy_reference = energy
        result.qm_energy = energy
        result.qm_target = self.scale * (energy - self.energy_reference)
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
        print("%sQM restraints: engine %s, %s, scale %g" % (
            prefix, self.engine_name, what, self.scale), file=log)
        if self.charge_assignment is not None:
            self.charge_assignment.show(log, prefix=prefix + "  ")


def model_bonds(model, elements=None):
    """Covalent bonds of a processed model: library bond proxies + distances."""
    sites = np.array(model.get_sites_cart())
    if elements is None:
        elements = [chemistry._element(a) for a in model.get_hierarchy().atoms()]
    return covalent_bonds(elements, sites, extra_pairs=library_bond_pairs(model))


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
        sel = model.selection(params.selection)
        if sel.count(True) == 0:
            raise Sorry("qm_restraints.selection=%r selects no atoms." % params.selection)
        if sel.count(True) < n:
            region = build_region(np.array(sel), elements, model_bonds(model, elements), log=log)
            selection = np.zeros(n, dtype=bool)
            selection[region.atoms] = True
    if params.check_hydrogens:
        chemistry.check_hydrogens(hierarchy, selection)
    if fragment_params is not None:
        from qr_phenix import fragmentation
        if fragmentation.fragments_enabled(fragment_params, n, params.selection):
            evaluator = fragmentation.build_fragment_evaluator(
                model, params, fragment_params, parallel_params, log=log)
            return QMRestraintsManager(standard=standard, evaluator=evaluator, n_atoms=n,
                                       scale=params.scale, engine_name=params.engine)
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
        scale=params.scale, engine_name=params.engine, charge_assignment=charges)


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

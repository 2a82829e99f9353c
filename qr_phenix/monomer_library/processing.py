"""Processing a model with the library: the in-memory patches a library
lacks (restraint objects), CCD dictionaries for residues it has no entry
for, and the library's terms of a processed model (manager, bonds).
"""

import os
import threading
from pathlib import Path

from libtbx.utils import Sorry, null_out

from qr_phenix.monomer_library.cif_patches import (
    PATCHED_MOD_IDS, mods_cif_model, patch_comp_model, wants_neutron_column)
from qr_phenix.monomer_library.library import (
    activate_library, comp_file, find_library, is_library, monomer_server, needs_patch)
from qr_phenix.residue_names import STANDARD_AMINO_ACIDS

_cache_lock = threading.RLock()
_ro_cache = {}          # (library, residues, nuclear) -> restraint objects
_comp_cache = {}        # (file, mtime, nuclear) -> patched cif model or None


# --- restraint objects ---------------------------------------------------------

def _residue_names(hierarchy):
    return sorted({ag.resname.strip().upper()
                   for ag in hierarchy.atom_groups()} - {""})


def _patched_comp(path, nuclear):
    # Patched copy of one dictionary file, or None if nothing to patch.
    import iotbx.cif
    key = (str(path), path.stat().st_mtime_ns, nuclear)
    if key not in _comp_cache:
        model = iotbx.cif.reader(file_path=str(path), strict=False).model()
        _comp_cache[key] = model if patch_comp_model(model, neutron=nuclear) \
            else None
    return _comp_cache[key]


def restraint_objects_for(hierarchy, nuclear=False, library=None):
    """[(name, iotbx.cif model)] for mmtbx.model.manager(restraint_objects=)
    that make `hierarchy` process with `library` (default: the active one).

    Supplies renamed amino-acid dictionaries, the missing mods and, with
    nuclear=True, value_dist_neutron columns, but only what the library
    lacks: with the overlay this is usually an empty list. Cached per set of
    residue names.
    """
    if library is None:
        library = find_library()
    library = str(library)
    residues = tuple(_residue_names(hierarchy))
    key = (library, residues, bool(nuclear))
    with _cache_lock:
        if key in _ro_cache:
            return list(_ro_cache[key])
        result = []
        if is_library(library) and needs_patch(library):
            mod_ids = list(PATCHED_MOD_IDS)
            result.append(("qr_phenix_mods.cif",
                           mods_cif_model(mod_ids, neutron=nuclear)))
        patched_names = not needs_patch(library) if is_library(library) \
            else False
        for resname in residues:
            if not (nuclear or resname in STANDARD_AMINO_ACIDS):
                continue
            path = comp_file(library, resname)
            if path is None:
                continue
            if patched_names and not (nuclear and wants_neutron_column(path)):
                continue            # overlay or PHENIX: nothing to add
            model = _patched_comp(path, nuclear)
            if model is not None:
                result.append(("qr_phenix_%s.cif" % resname, model))
        _ro_cache[key] = tuple(result)
        return result


# --- model processing ------------------------------------------------------------

def _read_model_file(path):
    import iotbx.pdb
    path = Path(path)
    if not path.is_file():
        raise Sorry("Model file not found: %s" % path)
    try:
        pdb_inp = iotbx.pdb.input(file_name=str(path))
        n_atoms = pdb_inp.atoms().size()
    except Sorry as e:
        raise Sorry("Cannot read model file %s: %s" % (path, e))
    except Exception as e:
        raise Sorry("Cannot read model file %s: %s: %s" % (
            path, type(e).__name__, e))
    if n_atoms == 0:
        raise Sorry("Model file %s contains no atoms" % path)
    return pdb_inp


def _unknown_residues(model):
    # Residues with atoms that match no dictionary atom (all of them when the
    # residue has no dictionary), from pdb_interpretation's mapping summary.
    result = []
    for mapping in getattr(model, "_all_monomer_mappings", None) or []:
        atoms = list(mapping.unexpected_atoms) + list(mapping.duplicate_atoms)
        if not atoms or not hasattr(atoms[0], "parent"):
            continue
        ag = atoms[0].parent()
        rg = ag.parent()
        label = "%s (chain %s, resid %s)" % (
            ag.resname.strip(), rg.parent().id.strip() or "' '",
            rg.resid().strip())
        if mapping.expected_atoms:
            label += " atoms %s" % ",".join(a.name.strip() for a in atoms)
        if label not in result:
            result.append(label)
    return result


def _new_manager(model_input, hierarchy, crystal_symmetry, restraint_objects,
                 stop_for_unknowns, log):
    import mmtbx.model
    return mmtbx.model.manager(
        model_input=model_input,
        pdb_hierarchy=hierarchy,
        crystal_symmetry=crystal_symmetry,
        restraint_objects=restraint_objects,
        stop_for_unknowns=stop_for_unknowns,
        log=log)


def library_manager(model):
    """The library (cctbx) geometry manager of a processed model, also when
    qr_phenix's QM manager wraps it."""
    grm = model.get_restraints_manager().geometry
    return getattr(grm, "standard", grm)


def library_bonds(model):
    """The library's bond restraints of a processed model (links included):
    (pairs, ideal): an (n, 2) array of atom indices and the n ideal lengths
    (A; X-H at the library's electron-cloud or neutron lengths, as processed)."""
    import numpy as np
    proxies = library_manager(model).pair_proxies(
        sites_cart=model.get_sites_cart()).bond_proxies.simple
    pairs = np.array([p.i_seqs for p in proxies], dtype=int).reshape(-1, 2)
    ideal = np.array([p.distance_ideal for p in proxies], dtype=float)
    return pairs, ideal


def library_bond_pairs(model):
    """The library's bonded atom pairs (i, j) of a processed model, as tuples."""
    return [tuple(p) for p in library_bonds(model)[0]]


def process_model(model_or_path, crystal_symmetry=None, stop_for_unknowns=True,
                  nuclear=False, log=None, pdb_interpretation_overrides=None,
                  grm_normalization=True, restraint_objects=None):
    """Read (if needed) and process a model with restraints.

    model_or_path: PDB/mmCIF file name, iotbx.pdb input, or
    mmtbx.model.manager (its hierarchy is copied; the input is unchanged).
    nuclear: X-H bonds at nuclear distances (use_neutron_distances=True).
    pdb_interpretation_overrides: dict of pdb_interpretation parameters,
    e.g. {"flip_symmetric_amino_acids": False}.
    grm_normalization: passed to model.process (mmtbx default True).
    restraint_objects: extra [(name, cif model)] for ligands; residues
    covered neither by these nor by the library get a dictionary generated
    from the CCD (qr_phenix.ccd_dictionary).
    Returns a new, processed mmtbx.model.manager.
    """
    import mmtbx.model
    from qr_phenix import ccd_dictionary
    library = activate_library(log=log)
    mmtbx_log = log if log is not None else null_out()
    model_input = hierarchy = None
    source = "the model"
    if isinstance(model_or_path, (str, os.PathLike)):
        source = str(model_or_path)
        model_input = _read_model_file(model_or_path)
    elif isinstance(model_or_path, mmtbx.model.manager):
        hierarchy = model_or_path.get_hierarchy().deep_copy()
        if crystal_symmetry is None:
            crystal_symmetry = model_or_path.crystal_symmetry()
    elif hasattr(model_or_path, "construct_hierarchy"):
        model_input = model_or_path
    else:
        raise TypeError("process_model: expected a file name, iotbx.pdb "
                        "input or mmtbx.model.manager, got %r"
                        % type(model_or_path).__name__)
    params = mmtbx.model.manager.get_default_pdb_interpretation_params()
    pi = params.pdb_interpretation
    # H-bonded donor-H...acceptor contacts 0.6 A shorter than van der Waals, as
    # in phenix.refine; without it the library breaks every helix H-bond
    # (1us0 helix: nonbonded residual 414 -> 23 kcal/mol-like units)
    pi.const_shrink_donor_acceptor = 0.6
    for name, value in (pdb_interpretation_overrides or {}).items():
        if not hasattr(pi, name):
            raise Sorry("Unknown pdb_interpretation parameter: %s" % name)
        setattr(pi, name, value)
    pi.use_neutron_distances = bool(nuclear)
    model = _new_manager(model_input, hierarchy, crystal_symmetry, None,
                         stop_for_unknowns, mmtbx_log)
    objects = restraint_objects_for(model.get_hierarchy(), nuclear=nuclear,
                                    library=library)
    objects = objects + list(restraint_objects or [])
    objects = objects + ccd_dictionary.missing_dictionaries(
        model, lambda resname: comp_file(library, resname) is not None, monomer_server,
        objects, log=log)
    if objects:
        model.set_restraint_objects(objects)
    try:
        model.process(make_restraints=True, pdb_interpretation_params=params,
                      grm_normalization=grm_normalization)
    except Sorry as e:
        if not (stop_for_unknowns and "nonbonded energy type" in str(e)):
            raise
        probe = _new_manager(None, model.get_hierarchy().deep_copy(),
                             model.crystal_symmetry(), objects or None,
                             False, null_out())
        probe.process(make_restraints=False, pdb_interpretation_params=params)
        unknown = _unknown_residues(probe) or ["(not identified)"]
        raise Sorry(
            "Residues not covered by the restraints library in %s: %s.\n"
            "  Fix: put them in the QM selection and process with "
            "stop_for_unknowns=False (the library then leaves them "
            "unrestrained), or supply a CIF dictionary for them." % (
                source, "; ".join(unknown)))
    return model



"""Fragment-based QM restraints for large models.

partition.py  cores (clusters of chemical groups), buffers, caps; the groups, their
              charges and symmetry images come from qr_phenix/chemical_groups.py
evaluator.py  FragmentEvaluator: the restraints manager's evaluator contract
parallel.py   serial / process pool / Dask execution with retries
check.py      accuracy and cost of fragments against whole-model QM (qr.fragments_check)

The PHIL scopes below go into a program next to `qm_restraints`:

    include scope qr_phenix.fragmentation.master_phil_str
"""

import sys

import numpy as np
from libtbx import Auto
from libtbx.utils import Sorry

from qr_phenix import chemistry
from qr_phenix.engines.settings import engine_settings_from_params
from qr_phenix.monomer_library import library_bond_pairs

FRAGMENTS_PHIL = """
fragments
  .short_caption = QM fragmentation
  .help = "Split a large model into overlapping fragments (core + buffer) for \
           the QM restraints; each atom's gradient comes from its core fragment"
{
  enabled = Auto
    .type = bool
    .help = "Auto: on for whole-model QM with at least min_atoms_for_auto atoms"
    .short_caption = Use fragments
  min_atoms_for_auto = 800
    .type = int
    .help = "Auto turns fragments on from this many atoms (whole-model QM)"
    .short_caption = Auto threshold (atoms)
  core_size = 40
    .type = int
    .help = "Target number of atoms per core (units: see buffer_units; spatially \
             compact)"
    .short_caption = Core size (atoms)
  buffer_radius = 3.5
    .type = float
    .help = "Units with a heavy atom within this distance (A) of a core heavy \
             atom are added as buffer (3.5 A takes in every H-bond partner); \
             bonds cut at the buffer edge get H caps"
    .short_caption = Buffer radius (A)
  solvent = water
    .type = str
    .help = "Implicit solvent for fragments when qm_restraints.engine_options.solvent \
             is None (vacuum for the rest); by default engine_options.solvent=auto \
             already gives every QM calculation water.  A fragment cut out of a \
             protein carries charged groups without their counter-charges: in \
             vacuum its SCF is slow (1us0: 5-10x for charge -5 fragments) and \
             over-polarised"
    .short_caption = Fragment implicit solvent
  buffer_units = *groups residues
    .type = choice
    .help = "What a buffer is made of: groups (amino acids cut into N-H/C=O \
             peptide groups, CA and side chain, at single bonds) keeps fragments \
             2-3x smaller than whole residues"
    .short_caption = Buffer units
  rebuild_displacement = 1.0
    .type = float
    .help = "Rebuild fragments when an atom has moved more than this (A) since \
             the last partition"
    .short_caption = Rebuild after displacement (A)
  include_symmetry = True
    .type = bool
    .help = "Add residues of symmetry copies (crystal contacts) to buffers"
    .short_caption = Symmetry neighbours in buffers
  energy = *integrated fragment_sum
    .type = choice
    .help = "integrated: trapezoid integral of the assembled gradient, consistent \
             with it for line searches (default); fragment_sum: core-weighted sum \
             of fragment energies, an estimate not consistent with the gradient"
    .short_caption = Fragment energy
  retries = 2
    .type = int
    .help = "Times a failed fragment calculation (or a lost worker) is re-run"
}
"""

#: the `parallel` scope alone, for programs that run fragments without refining
PARALLEL_PHIL = """
parallel
  .short_caption = Parallel execution
{
  nproc = 1
    .type = int
    .help = "Worker processes (local pool), or Dask workers of a local cluster"
    .short_caption = Processes
  scheduler = None
    .type = str
    .help = "Dask distributed: tcp://host:port of a running scheduler, or 'local' \
             for a local cluster of nproc workers; None: process pool (nproc > 1) \
             or serial"
    .short_caption = Dask scheduler
  threads_per_worker = 1
    .type = int
    .help = "Engine threads (OpenMP/BLAS) per worker; each worker runs one \
             fragment at a time"
    .short_caption = Threads per worker
}
"""

master_phil_str = FRAGMENTS_PHIL + PARALLEL_PHIL


def fragments_enabled(fragment_params, n_atoms, qm_selection=None):
    """Resolve enabled=Auto: on for whole-model QM above the size threshold."""
    enabled = fragment_params.enabled
    if enabled is None or enabled is Auto:
        return qm_selection is None and n_atoms >= fragment_params.min_atoms_for_auto
    return bool(enabled)


def fragment_solvent(settings, solvent, log=sys.stdout):
    """Settings with the fragments' implicit solvent, unless the engine options
    already name one, the engine has none, or solvent is None."""
    from dataclasses import replace
    from qr_phenix.engines import get_engine
    if settings.solvent or solvent is None or str(solvent).lower() == "none":
        return settings
    supported = get_engine(settings.name).solvation
    if log is not None:
        print("  fragments: %s" % ("implicit solvent %s (fragments.solvent)" % solvent
                                   if supported else "engine %s has no implicit solvent;"
                                   " fragments in vacuum" % settings.name), file=log)
    return replace(settings, solvent=str(solvent)) if supported else settings


def build_fragment_evaluator(model, qm_params, fragment_params, parallel_params,
                             log=sys.stdout):
    """FragmentEvaluator for a processed mmtbx model.

    qm_params: the `qm_restraints` extract (engine and engine_options; charge
    and multiplicity are per fragment, so a user total charge is refused).
    Use as QMRestraintsManager(standard, evaluator, region_atoms=None, ...).
    """
    from qr_phenix.fragmentation.evaluator import FragmentEvaluator
    from qr_phenix.fragmentation.parallel import make_executor
    if getattr(qm_params, "selection", None) is not None:
        raise Sorry("fragments.enabled=True needs whole-model QM: unset"
                    " qm_restraints.selection, or set fragments.enabled=False.")
    if getattr(qm_params, "multiplicity", None) not in (None, 1):
        raise Sorry("Fragments are closed-shell (multiplicity 1); for an open-shell"
                    " model use whole-model QM (fragments.enabled=False).")
    if getattr(qm_params, "charge", None) is not None:
        print("  fragments: qm_restraints.charge=%s is ignored; each fragment's charge"
              " comes from its residues" % qm_params.charge, file=log)
    hierarchy = model.get_hierarchy()
    chemistry.check_single_conformer(hierarchy)
    p = fragment_params
    if p.core_size < 1 or p.buffer_radius < 0 or p.rebuild_displacement <= 0:
        raise Sorry("fragments: core_size must be >= 1, buffer_radius >= 0 and"
                    " rebuild_displacement > 0.")
    settings = engine_settings_from_params(qm_params, 0, 1)
    settings = fragment_solvent(settings, p.solvent, log)
    executor = make_executor(parallel_params, retries=p.retries, log=log)
    evaluator = FragmentEvaluator(
        hierarchy, settings, crystal_symmetry=model.crystal_symmetry(),
        core_size=p.core_size, buffer_radius=p.buffer_radius,
        rebuild_displacement=p.rebuild_displacement,
        include_symmetry=p.include_symmetry, energy_mode=p.energy,
        split_residues=p.buffer_units == "groups",
        executor=executor, library_bonds=library_bond_pairs(model), log=log)
    evaluator.update_partition(np.array(model.get_sites_cart()))
    return evaluator

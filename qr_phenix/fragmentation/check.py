"""Accuracy and cost of fragment-assembled QM gradients against whole-model QM
(the work behind qr.fragments_check, programs/fragments_check.py).

    python -m qr_phenix.fragments_check model.pdb [engine=gfn2] [sizes=30:3.5,40:3.5,60:4]

computes the whole-model gradient once, then for every (core_size,
buffer_radius) pair the fragment-assembled gradient
(qr_phenix.fragmentation.FragmentEvaluator), and prints per setting: number
of fragments, mean/max fragment size (atoms with caps), setup time, gradient
time, rms and max per-atom |error| (kcal/mol/A), rms error relative to the
rms |g| of the reference, and the atoms with the largest errors.

The reference is the isolated model (no crystal neighbours), so fragments are
built without symmetry images by default (include_symmetry=False) for a
like-for-like comparison.
"""

import sys
import time
from dataclasses import dataclass, field, replace
from typing import List, Tuple

import numpy as np
from libtbx.utils import Sorry

from qr_phenix import chemistry
from qr_phenix.chemical_groups import model_units
from qr_phenix.engines import make_calculator
from qr_phenix.engines.base import energy_and_gradient
from qr_phenix.engines.settings import ENGINE_OPTIONS_PHIL, engine_phil_str
from qr_phenix.fragmentation import PARALLEL_PHIL
from qr_phenix.fragmentation.evaluator import FragmentEvaluator
from qr_phenix.fragmentation.parallel import SerialExecutor


def _master_phil_str():
    engine = engine_phil_str() + ENGINE_OPTIONS_PHIL
    return """
fragments_check
  .short_caption = Fragment accuracy check
{
  sizes = "30:3.5,40:3.5,60:4"
    .type = str
    .help = "Comma-separated core_size:buffer_radius pairs (atoms:A) to test"
    .short_caption = Settings (core:buffer)
  include_symmetry = False
    .type = bool
    .help = "Add symmetry neighbours to the buffers; the whole-model reference \
             has none, so False compares like with like"
    .short_caption = Symmetry neighbours in buffers
  max_atoms = 1500
    .type = int
    .help = "Refuse larger models (the whole-model reference gets slow) unless \
             force=True"
    .short_caption = Largest model (atoms)
  force = False
    .type = bool
    .help = "Run the whole-model reference on a model larger than max_atoms"
  worst = 5
    .type = int
    .help = "Atoms with the largest errors listed per setting"
  solvent = water
    .type = str
    .help = "Implicit solvent for the reference and the fragments, as \
             fragments.solvent in refinement (engine_options.solvent wins); \
             None for vacuum"
    .short_caption = Implicit solvent
}
%s
%s
""" % (engine, PARALLEL_PHIL)


master_phil_str = _master_phil_str()


def parse_sizes(text) -> List[Tuple[int, float]]:
    """'20:3,30:4.5' -> [(20, 3.0), (30, 4.5)]; Sorry on anything else."""
    pairs = []
    for item in str(text or "").replace(" ", "").split(","):
        if not item:
            continue
        try:
            core, buffer = item.split(":")
            pair = (int(core), float(buffer))
        except ValueError:
            raise Sorry("fragments_check.sizes: %r is not core_size:buffer_radius"
                        " (e.g. 30:4)." % item)
        if pair[0] < 1 or pair[1] < 0:
            raise Sorry("fragments_check.sizes: %r needs core_size >= 1 and"
                        " buffer_radius >= 0." % item)
        pairs.append(pair)
    if not pairs:
        raise Sorry("fragments_check.sizes is empty: give e.g. sizes=20:3,30:4.")
    return pairs


@dataclass
class SettingResult:
    core_size: int
    buffer_radius: float
    n_fragments: int
    mean_fragment_atoms: float
    max_fragment_atoms: int
    setup_seconds: float
    gradient_seconds: float
    rms_error: float          # kcal/mol/A, per-atom |g_frag - g_ref|
    max_error: float
    relative_rms_error: float  # rms_error / rms |g_ref|
    worst: List[Tuple[str, float]] = field(default_factory=list)


@dataclass
class CheckResult:
    n_atoms: int
    engine: str
    charge: int
    reference_seconds: float
    rms_gradient: float       # kcal/mol/A
    settings: List[SettingResult] = field(default_factory=list)


def check_fragments(hierarchy, settings, sizes, crystal_symmetry=None,
                    include_symmetry=False, executor=None, worst=5, log=sys.stdout):
    """Whole-model vs fragment-assembled gradient for every (core, buffer) pair.

    settings: EngineSettings (charge/multiplicity are set here: whole-model
    charge = sum of residue charges, closed shell).
    """
    atoms = hierarchy.atoms()
    sites = np.array(atoms.extract_xyz())
    symbols = [chemistry._element(a) for a in atoms]
    labels = [a.id_str().replace("pdb=", "").strip('"') for a in atoms]
    charge = int(sum(u.charge for u in model_units(hierarchy)))
    whole = replace(settings, charge=charge, multiplicity=1)
    print("Whole-model %s gradient: %d atoms, charge %+d ..."
          % (settings.name, len(sites), charge), file=log)
    log.flush() if hasattr(log, "flush") else None
    t0 = time.perf_counter()
    ref = energy_and_gradient(make_calculator(whole), symbols, sites).gradient
    t_ref = time.perf_counter() - t0
    norm_ref = np.linalg.norm(ref, axis=1)
    rms_g = float(np.sqrt(np.mean(norm_ref ** 2)))
    print("  %.1f s; rms |g| %.2f, max |g| %.2f kcal/mol/A"
          % (t_ref, rms_g, norm_ref.max()), file=log)
    result = CheckResult(n_atoms=len(sites), engine=settings.name, charge=charge,
                         reference_seconds=t_ref, rms_gradient=rms_g)
    executor = executor if executor is not None else SerialExecutor()
    for core_size, buffer_radius in sizes:
        ev = FragmentEvaluator(hierarchy, settings, crystal_symmetry=crystal_symmetry,
                               core_size=core_size, buffer_radius=buffer_radius,
                               include_symmetry=include_symmetry,
                               energy_mode="fragment_sum", executor=executor)
        t0 = time.perf_counter()
        ev.update_partition(sites)
        t_setup = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, g = ev.energy_and_gradient(sites)
        t_grad = time.perf_counter() - t0
        err = np.linalg.norm(g - ref, axis=1)
        order = np.argsort(-err)[:max(0, worst)]
        sizes_f = np.array([f.n_atoms for f in ev.partition.fragments])
        r = SettingResult(
            core_size=core_size, buffer_radius=buffer_radius,
            n_fragments=len(sizes_f), mean_fragment_atoms=float(sizes_f.mean()),
            max_fragment_atoms=int(sizes_f.max()), setup_seconds=t_setup,
            gradient_seconds=t_grad, rms_error=float(np.sqrt(np.mean(err ** 2))),
            max_error=float(err.max()),
            relative_rms_error=float(np.sqrt(np.mean(err ** 2)) / rms_g) if rms_g else 0.0,
            worst=[(labels[i], float(err[i])) for i in order])
        result.settings.append(r)
        show_setting(r, log)
    show_table(result, log)
    return result


def show_setting(r, log=sys.stdout):
    print("core %d, buffer %.1f A: %d fragments (atoms with caps: mean %.0f, max %d);"
          " setup %.2f s, gradient %.1f s; |error| rms %.3f max %.3f kcal/mol/A"
          " (%.1f%% of rms |g|)"
          % (r.core_size, r.buffer_radius, r.n_fragments, r.mean_fragment_atoms,
             r.max_fragment_atoms, r.setup_seconds, r.gradient_seconds, r.rms_error,
             r.max_error, 100 * r.relative_rms_error), file=log)
    for label, e in r.worst:
        print("    %-28s %.3f" % (label, e), file=log)


def show_table(result, log=sys.stdout):
    print("\n%s, %d atoms, charge %+d; whole-model gradient %.1f s, rms |g| %.2f"
          " kcal/mol/A" % (result.engine, result.n_atoms, result.charge,
                           result.reference_seconds, result.rms_gradient), file=log)
    print("| core | buffer A | fragments | atoms mean/max | setup s | gradient s"
          " | rms err | max err | rms err / rms g |", file=log)
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|", file=log)
    for r in result.settings:
        print("| %d | %.1f | %d | %.0f / %d | %.2f | %.1f | %.3f | %.3f | %.1f%% |"
              % (r.core_size, r.buffer_radius, r.n_fragments, r.mean_fragment_atoms,
                 r.max_fragment_atoms, r.setup_seconds, r.gradient_seconds, r.rms_error,
                 r.max_error, 100 * r.relative_rms_error), file=log)
    print("(errors: per-atom |g_fragments - g_whole|, kcal/mol/A)", file=log)


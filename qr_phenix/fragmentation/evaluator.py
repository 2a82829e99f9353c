"""Fragment-assembled QM energy and gradient for a whole model.

`FragmentEvaluator.energy_and_gradient(sites)` follows the evaluator contract
of `qr_phenix.restraints_manager` (model coordinates (n, 3) in A ->
(kcal/mol, (n, 3) kcal/mol/A)), so it plugs in as

    QMRestraintsManager(standard, FragmentEvaluator(...), region_atoms=None, ...)

Gradient: atom i's gradient is the gradient of the fragment where i is core
(with the exact chain rule of its caps, qr_phenix.qm_region).  This is not
the gradient of any single energy function: neighbouring fragments see
slightly different surroundings.

Energy (`energy_mode`):
* integrated (default): E(x) = E(a) + 1/2 (g(a) + g(x)) . (x - a), where a is
  the nearest previously evaluated point (trapezoid rule along the step).  It
  is consistent with the returned gradient to second order in the step, which
  is what an L-BFGS line search tests (sufficient decrease, curvature), so
  minimisers behave as on a true energy.  Its absolute value starts at the
  core-weighted estimate below and is path-dependent by O(step^3); only
  differences along a minimisation are meaningful (as with E_0 in the
  restraints manager anyway).
* fragment_sum: sum over fragments of E_f * (core atoms / fragment atoms), an
  estimate of the total energy at every point, but *not* consistent with the
  gradient (its changes include buffer and cap terms the gradient leaves
  out): line searches can stall.  Use it for reporting, or with a minimiser
  that takes fixed steps, not with L-BFGS.

Fragments are rebuilt (new cores, buffers, caps, charges) when an atom has
moved more than `rebuild_displacement` since the last partition.
"""

import sys
import time
from dataclasses import replace

import numpy as np

from qr_phenix.chemical_groups import model_units
from qr_phenix.engines.base import EngineSettings
from qr_phenix.fragmentation.parallel import FragmentJob, SerialExecutor
from qr_phenix.fragmentation.partition import build_partition

HISTORY = 8  # evaluated points kept as anchors for the integrated energy


class FragmentEvaluator:

    def __init__(self, hierarchy, settings: EngineSettings, crystal_symmetry=None,
                 core_size=40, buffer_radius=3.5, rebuild_displacement=1.0,
                 include_symmetry=True, energy_mode="integrated", executor=None,
                 library_bonds=(), split_residues=True, log=None):
        if energy_mode not in ("integrated", "fragment_sum"):
            raise ValueError("energy_mode must be integrated or fragment_sum")
        self.hierarchy = hierarchy
        self.settings = settings
        self.crystal_symmetry = crystal_symmetry
        self.core_size = core_size
        self.buffer_radius = buffer_radius
        self.rebuild_displacement = rebuild_displacement
        self.include_symmetry = include_symmetry
        self.energy_mode = energy_mode
        self.executor = executor if executor is not None else SerialExecutor()
        self.library_bonds = list(library_bonds)
        self.log = log
        self.units = model_units(hierarchy, log=log, split_residues=split_residues)
        self.n_atoms = hierarchy.atoms_size()
        self.partition = None
        self.lead = None      # sibling(): the evaluator whose partition this one uses
        # worker calculator caches are keyed by (evaluator, generation, fragment)
        import uuid
        self._id = uuid.uuid4().hex[:12]
        self.generation = 0
        self.n_evaluations = 0
        self.setup_seconds = 0.0
        self.last_seconds = 0.0
        self.last_fragment_seconds = []
        self.last_estimate = None
        self._history = []
        #: testing hook: passed to the jobs of the next evaluation only
        self.inject_failure = None
        #: callable(done, total) after each finished fragment (progress reports)
        self.on_fragment_done = None

    def sibling(self, settings: EngineSettings):
        """An evaluator of the same fragments with another engine (its own
        calculators, the same executor): the force field of
        qr_phenix/qm_expansion.py sees what the QM engine sees.  It computes
        on this evaluator's partition and never rebuilds its own: the local
        model takes E_FF(x) - E_FF(x0) between QM gradients, which means
        nothing across two partitions, and this evaluator is not called (and
        keeps its partition) until the next QM gradient."""
        import copy
        import uuid
        other = copy.copy(self)
        other.lead = self
        other.settings = settings
        other._id = uuid.uuid4().hex[:12]
        other.n_evaluations = 0
        other._history = []
        other.on_fragment_done = None    # the cost reporter counts QM fragments
        other.inject_failure = None
        return other

    # -- partition ----------------------------------------------------------------------

    def update_partition(self, sites, force=False):
        sites = np.asarray(sites, dtype=float).reshape(-1, 3)
        if self.lead is not None:
            # 3kyi, local QM models: GFN-FF rebuilt its fragments in the middle
            # of a local model (an atom 1 A from its partition's sites; charged
            # fragments 66 -> 65) and the steps on it stretched NEP A 51's P-O1P
            # bond from 1.50 to 2.08 A
            if self.lead.partition is None:
                self.lead.update_partition(sites)
            rebuilt = self.partition is not self.lead.partition
            self.partition, self.generation = self.lead.partition, self.lead.generation
            return rebuilt
        if not force and self.partition is not None and \
                self.partition.max_displacement(sites) <= self.rebuild_displacement:
            return False
        self.partition = build_partition(
            self.hierarchy, sites, crystal_symmetry=self.crystal_symmetry,
            core_size=self.core_size, buffer_radius=self.buffer_radius,
            include_symmetry=self.include_symmetry, library_bonds=self.library_bonds,
            units=self.units, log=self.log)
        self.setup_seconds += self.partition.seconds
        self.generation += 1
        return True

    def jobs(self, sites):
        ext = self.partition.extended_sites(sites)
        threads = getattr(self.executor, "threads", self.settings.threads)
        jobs = []
        for f in self.partition.fragments:
            s = replace(self.settings, charge=f.charge, multiplicity=f.multiplicity,
                        threads=threads)
            jobs.append(FragmentJob(key=(self._id, self.generation, f.index), settings=s,
                                    symbols=tuple(f.symbols),
                                    positions=f.region.positions(ext)))
        return ext, jobs

    # -- the evaluator contract ------------------------------------------------------------

    def energy_and_gradient(self, sites):
        t0 = time.perf_counter()
        sites = np.asarray(sites, dtype=float).reshape(-1, 3)
        if len(sites) != self.n_atoms:
            raise ValueError("expected %d sites, got %d" % (self.n_atoms, len(sites)))
        self.update_partition(sites)
        ext, jobs = self.jobs(sites)
        if self.inject_failure:
            mode, marker = self.inject_failure
            jobs[0] = replace(jobs[0], fail_mode=mode, fail_marker=marker)
            self.inject_failure = None
        results = self.executor.run(jobs, on_done=self.on_fragment_done)
        gradient = np.zeros((self.n_atoms, 3))
        estimate = 0.0
        n_ext = len(ext)
        for f, (energy, g_region, _) in zip(self.partition.fragments, results):
            g = f.region.gradient_to_model(g_region, ext, n_ext)
            gradient[f.core] = g[f.core]
            estimate += energy * len(f.core) / len(f.region.atoms)
        self.last_fragment_seconds = [r[2] for r in results]
        self.last_estimate = estimate
        if self.energy_mode == "fragment_sum":
            energy = estimate
        else:
            energy = self._integrated(sites, gradient, estimate)
        self._history.append((sites.copy(), energy, gradient))
        del self._history[:-HISTORY]
        self.n_evaluations += 1
        self.last_seconds = time.perf_counter() - t0
        return energy, gradient

    def _integrated(self, sites, gradient, estimate):
        if not self._history:
            return estimate
        disp = [np.abs(sites - x).max() for x, _, _ in self._history]
        x_a, e_a, g_a = self._history[int(np.argmin(disp))]
        return e_a + 0.5 * float(np.sum((g_a + gradient) * (sites - x_a)))

    def reset_energy_path(self):
        """Forget the anchors (a new, unrelated set of coordinates follows)."""
        self._history = []

    def show_summary(self, log=sys.stdout, prefix="  "):
        if self.partition is not None:
            self.partition.show(log, prefix=prefix)
        print("%sfragment energy: %s; rebuilt when an atom moved > %.2f A"
              % (prefix, self.energy_mode, self.rebuild_displacement), file=log)

    def close(self):
        self.executor.close()

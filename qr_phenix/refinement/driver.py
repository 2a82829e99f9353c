"""The macro-cycle loop shared by X-ray, real-space and geometry refinement.

A target (subclass) says how to minimise for a given data-weight scale, how
to measure a cycle, and what the gradient-norm ratio is.  This class runs
weight trials, macro-cycles, convergence tests, logging and checkpoints, so
all modes log, choose weights and resume the same way.
"""

import sys
import time
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import scitbx.lbfgs

from qr_phenix import qm_expansion
from qr_phenix.refinement import best_model
from qr_phenix.refinement import progress
from qr_phenix.refinement import statistics as stats_mod
from qr_phenix.refinement import weights as weights_mod


def termination(max_iterations):
    """L-BFGS stopping rules.  The default |g| < 1e-5 test fires at once when
    the total gradient is small in absolute terms (a QM energy near its
    minimum, ML targets per reflection), stopping refinement without a
    step; iterations and the drop test decide instead."""
    return scitbx.lbfgs.termination_parameters(
        max_iterations=max_iterations, traditional_convergence_test_eps=1e-12)


MAX_SAFETY_STEPS = 2
# Past MAX_SAFETY_STEPS restraints x2 goes on, up to this many steps in all,
# while it works: bonds or angles still over the limit but closer to it than
# the cycle before.  Without this, 11 of 100 QM refinements of the 1us0 study
# (local QM models) reached cycles at R-free 0.06-0.14 with angles 4.0-5.7
# deg against the limit 4.0 and the safety steps spent, and handed back a
# model 0.05-0.43 worse (cycle 1 or the start).
MAX_GEOMETRY_STEPS = 5
ANNEAL_MIN_R_FREE_GAIN = 0.02   # anneal=auto: trial R-free this much below the chosen one
ANNEAL_QM_BOND_FACTOR = 2.0     # QM anneals only from trials with bonds within this x limit
MAX_EXTRA_TRIALS = 6       # weight search toward stronger restraints: down to scale/64...
GAP_STEP_MIN = 0.002       # ...while halving the scale shrinks R-free - R-work by this
STALE_CYCLES = 4           # stop after this many cycles without progress (_last_progress)
# The weight chosen by trials from a far-off start is often too cautious later:
# the start's transient distortions make every strong data weight look
# over-fitted.  As the original Q|R did, the data weight is doubled when a
# cycle ends with geometry well inside the limits and an acceptable R gap.
RAISE_BELOW_FRACTION = 0.6
MAX_RAISE_STEPS = 3
# On local QM models (qm_local_iterations) an L-BFGS step gains about half
# what an exact one does: the model's gradient is 35-114 % off QM's where a
# 10-step run ends.  1us0 helix start d1.5_m00, weight 0.25, 10 cycles:
# R-work 0.057 exact (327 QM gradients), 0.193 on local models at 25
# iterations a cycle (31), 0.052 at 50 (47).  Local-model cycles therefore
# take this many times max_iterations; the weight trials do not.
LOCAL_CYCLE_FACTOR = 2


@dataclass
class RefinementResult:
    start: stats_mod.CycleStats
    cycles: List[stats_mod.CycleStats] = field(default_factory=list)
    trials: List[weights_mod.Trial] = field(default_factory=list)
    scale: Optional[float] = None
    limits: Optional[weights_mod.Limits] = None
    converged: bool = False
    safety_steps: int = 0
    raise_steps: int = 0
    over_fitting_scale: Optional[float] = None   # the lowest scale that over-fitted
    annealing: bool = False             # weight annealing in progress
    selected: Optional[int] = None      # cycle handed back (0 = the start model)
    stopped: str = ""                   # why the run stopped early, if it did
    selection_note: str = ""

    @property
    def last(self):
        return self.cycles[-1] if self.cycles else self.start

    @property
    def final(self):
        """Statistics of the model handed back (see best_model)."""
        if self.selected is None:
            return self.last
        return ([self.start] + self.cycles)[self.selected]

    def as_dict(self):
        """What a checkpoint keeps (limits come from the job's settings)."""
        return {"start": self.start.as_dict(), "cycles": [c.as_dict() for c in self.cycles],
                "trials": [t.as_dict() for t in self.trials], "scale": self.scale,
                "converged": self.converged, "safety_steps": self.safety_steps,
                "raise_steps": self.raise_steps, "annealing": self.annealing,
                "over_fitting_scale": self.over_fitting_scale,
                "selected": self.selected, "stopped": self.stopped,
                "selection_note": self.selection_note}

    @classmethod
    def from_dict(cls, d, limits):
        return cls(start=stats_mod.CycleStats.from_dict(d["start"]),
                   cycles=[stats_mod.CycleStats.from_dict(c) for c in d["cycles"]],
                   trials=[weights_mod.Trial.from_dict(t) for t in d.get("trials", [])],
                   scale=d["scale"], limits=limits, converged=d.get("converged", False),
                   safety_steps=d.get("safety_steps", 0), raise_steps=d.get("raise_steps", 0),
                   annealing=d.get("annealing", False), selected=d.get("selected"),
                   over_fitting_scale=d.get("over_fitting_scale"),
                   stopped=d.get("stopped", ""), selection_note=d.get("selection_note", ""))


class MacroCycleRefinement:
    """Subclasses implement: minimise(scale), measure(cycle) -> CycleStats,
    and set `uses_data` (False for geometry-only)."""

    uses_data = True
    score = "r_free"   # trial score: "r_free" or "map_cc"

    def __init__(self, model, params, limits, quantum, log=sys.stdout, checkpoint=None,
                 checkpoint_state=None, validator=None):
        self.model = model
        self.params = params          # the `refinement` PHIL extract
        self.limits = limits
        self.quantum = quantum
        self.log = log
        self.checkpoint = checkpoint
        self.checkpoint_state = checkpoint_state or {}
        self.validator = validator    # callable(model, stats): clashscore, H-bonds
        self.geometry = stats_mod.HeavyAtomGeometry(model)
        self._reference_ratio = self.checkpoint_state.get("reference_ratio")
        self.local_iterations = self._local_iterations()
        # qm_local_scope=weight_trials: the trials on local models, the
        # macro-cycles with a QM gradient at every step
        self.local_cycles = getattr(params, "qm_local_scope", "all") != "weight_trials"
        if self.local_iterations and self.local_cycles:
            print("  Local QM models: a QM gradient every %d L-BFGS steps; macro-cycles of %d"
                  " iterations (%d x max_iterations)" % (
                      self.local_iterations, self.cycle_iterations, LOCAL_CYCLE_FACTOR),
                  file=self.log)
        elif self.local_iterations:
            print("  Local QM models in the weight trials (a QM gradient every %d L-BFGS"
                  " steps); macro-cycles with a QM gradient at every step" % (
                      self.local_iterations), file=self.log)
        self.iterations = self.cycle_iterations     # of the minimisation under way
        # each QM trial is a QM minimisation: qm_trial_iterations, at most a cycle's
        self.trial_iterations = (min(params.qm_trial_iterations, params.max_iterations)
                                 if quantum else params.max_iterations)
        self.max_extra_trials = MAX_EXTRA_TRIALS
        self.stale_cycles = STALE_CYCLES
        self.r_free_ceiling = None   # see best_model.choose; the QM stage sets it
        self.reporter = None     # progress.CostReporter, told each minimisation
        # time and iterations spent in minimisations: the QM stage's cost
        # estimate takes the rest of the library stage's time as time per cycle
        self.minimisation_seconds = 0.0
        self.minimisation_iterations = 0

    @property
    def cycle_iterations(self):
        """L-BFGS iterations of a macro-cycle's minimisation."""
        return self.params.max_iterations * (LOCAL_CYCLE_FACTOR if self.step_local_iterations()
                                             else 1)

    def step_local_iterations(self, trial=False):
        """L-BFGS steps per QM gradient in a weight trial or a macro-cycle
        (0: a QM gradient at every step)."""
        return self.local_iterations if trial or self.local_cycles else 0

    def _local_iterations(self):
        """L-BFGS iterations per QM gradient on the local model of the QM
        energy (qm_expansion.py); 0: a QM gradient at every evaluation."""
        wanted = self.params.qm_local_iterations if self.quantum else 0
        # Auto is resolved by the program (stages.local_iterations)
        wanted = max(0, wanted) if isinstance(wanted, int) else 0
        if not wanted:
            return 0
        grm = self.model.get_restraints_manager().geometry
        ok, why = grm.expansion_available()
        if not ok:
            print("  QM gradient at every L-BFGS step (refinement.qm_local_iterations=%d"
                  " needs GFN-FF: %s)" % (wanted, why), file=self.log)
            return 0
        engine = getattr(grm, "engine_name", None)
        if engine not in qm_expansion.MEASURED_ENGINES:
            print("  Warning: refinement.qm_local_iterations=%d with engine %s: GFN-FF's"
                  " curvature was measured to fit GFN2's only (PM7's when scaled x%g, and far"
                  " 1us0 starts still fell short); 0 takes a QM gradient at every step"
                  % (wanted, engine, qm_expansion.CURVATURE_SCALE["pm7"]), file=self.log)
        return wanted

    # -- to implement -------------------------------------------------------
    def minimise(self, scale):
        raise NotImplementedError

    def measure(self, cycle) -> stats_mod.CycleStats:
        raise NotImplementedError

    def sites_changed(self):
        """Called after the model's sites were set from outside."""

    def gradient_ratio(self):
        """|g_restraints| / |g_data| at the current sites."""
        raise NotImplementedError

    def reference_ratio(self):
        """The gradient ratio of the start model, kept for the whole run.

        Recomputing it every cycle (as phenix.refine does for library
        restraints) lets a QM energy weaken itself: near the QM minimum its
        gradient shrinks, the ratio falls and the data term loses weight
        (measured on the 1us0 helix: R-free 0.095 -> 0.136 over cycles 3-5).
        Keeping it fixed means the weight the trials chose is the weight used.
        """
        if self._reference_ratio is None:
            self._reference_ratio = self.gradient_ratio()
        return self._reference_ratio

    # -- shared -------------------------------------------------------------
    def get_sites(self):
        return self.model.get_sites_cart().deep_copy()

    def get_state(self):
        """What a candidate model is: coordinates (X-ray adds B-factors)."""
        return {"sites": np.array(self.get_sites()).round(6).tolist()}

    def set_state(self, state):
        self.set_sites(state["sites"])

    def set_sites(self, sites):
        from scitbx.array_family import flex
        if not isinstance(sites, flex.vec3_double):
            sites = flex.vec3_double(np.asarray(sites, dtype=float))
        self.model.set_sites_cart(sites)
        self.sites_changed()

    def _fill_common(self, s, t0, calls0, seconds0):
        s.bond_rmsd, s.angle_rmsd = self.geometry(self.model.get_sites_cart())
        s.restraint_energy = stats_mod.restraint_energy(self.model)
        calls, seconds = stats_mod.engine_counters(self.model)
        s.engine_calls = calls - calls0
        s.engine_seconds = seconds - seconds0
        s.seconds = time.perf_counter() - t0
        return s

    def _print(self, s):
        print(stats_mod.format_line(s), file=self.log)
        self.log.flush() if hasattr(self.log, "flush") else None

    def _trial_verdicts(self, trials):
        print("\n  Weight trials (same start, %d iterations each); limits: bonds <= %.3f A,"
              " angles <= %.2f deg%s" % (
                  self.trial_iterations, self.limits.bond_rmsd, self.limits.angle_rmsd,
                  ", R-free - R-work <= %.3f" % self.limits.gap if self.score == "r_free"
                  else ""), file=self.log)
        print("    scale   R-work  R-free    gap   bonds  angles   map CC  verdict", file=self.log)
        for t in trials:
            f = lambda x, fmt: (fmt % x) if x is not None else "     -"
            print("  %7.4g  %s  %s  %s  %6.4f  %6.2f  %s  %s" % (
                t.scale, f(t.r_work, "%6.4f"), f(t.r_free, "%6.4f"), f(t.gap, "%5.3f"),
                t.bond_rmsd, t.angle_rmsd, f(t.map_cc, "%7.4f"), t.verdict), file=self.log)
        print("", file=self.log)

    def _minimise(self, scale, label, iterations=None, trial=False):
        """One minimisation, announced to the cost reporter."""
        self.iterations = iterations or self.cycle_iterations
        local = self.step_local_iterations(trial)
        if self.reporter is not None:
            self.reporter.begin_step(label, self.iterations, local)
        self.minimisation_iterations += self.iterations
        t0 = time.perf_counter()
        try:
            if local:
                self._minimise_on_local_models(scale)
            else:
                self.minimise(scale)
        finally:
            self.minimisation_seconds += time.perf_counter() - t0
            if self.reporter is not None:
                self.reporter.end_step()
            self.iterations = self.cycle_iterations

    def _minimise_on_local_models(self, scale):
        """The minimisation's iterations in runs of `local_iterations`, each
        on the QM energy expanded about a fresh QM gradient (qm_expansion.py):
        one QM gradient per run instead of one or more per iteration."""
        grm = self.model.get_restraints_manager().geometry
        total = self.iterations
        try:
            for done in range(0, total, self.local_iterations):
                grm.expand_at(self.model.get_sites_cart())
                ok, why = grm.expansion_available()
                if not ok:
                    print("  %s: a QM gradient at every L-BFGS step from here on" % why,
                          file=self.log)
                    self.local_iterations = 0
                    if self.reporter is not None:
                        self.reporter.step_local_iterations = 0
                    self.iterations = total - done
                    self.minimise(scale)
                    return
                self.iterations = min(self.local_iterations, total - done)
                self.minimise(scale)
        finally:
            grm.end_expansion()

    def plan(self, result, n_cycles):
        """For the cost reporter: progress.Plan of the minimisations still to
        come: the first weight search (its extra trials marked optional), one
        per cycle, and trials around the weight in every cycle with
        weight_search=every; the earliest stop the stale rule allows (the last
        progress plus stale_cycles) and the stop the run is expected at.
        Made before the first cycle and again after each."""
        steps = []
        first = len(result.cycles) + 1
        if self.uses_data:
            earliest_stop = self._last_progress(result) + self.stale_cycles
            if self._remedy_next(result):
                earliest_stop = max(earliest_stop, len(result.cycles) + 1)
            earliest_stop = min(earliest_stop, n_cycles)
            # what the measured QM stages did (docs/refinement.md): X-ray ones
            # stopped anywhere from the earliest stop to the last cycle (1va7
            # after 5 of 5 twice, 3kyi after 4 of 5 twice and 2 of 5 once), so
            # the middle of that span, rounded up; they needed extra trials for
            # the R-free - R-work limit.  The map chain stopped as soon as the
            # rule let it after an improving first cycle (later cycles crowd
            # atoms into density, 3 runs), and maps have no gap limit to need
            # extra trials for
            expected_stop = (earliest_stop + n_cycles + 1) // 2 if self.score == "r_free" \
                else max(self._best[0], 1) + self.stale_cycles
        else:
            earliest_stop = expected_stop = n_cycles
        for cycle in range(first, n_cycles + 1):
            first_search = result.scale is None and cycle == first
            searching = self.uses_data and self._fixed_scale is None and (
                first_search or self.searches_every_cycle())
            if searching:
                scales = self.trial_scales(cycle, None if first_search else 1.0)
                n_extra = self.max_extra_trials if first_search else 0
                steps += [progress.PlannedStep(self._trial_label(cycle, k), self.trial_iterations,
                                               cycle, optional=k >= len(scales),
                                               local_iterations=self.step_local_iterations(True))
                          for k in range(len(scales) + n_extra)]
            else:
                steps.append(progress.PlannedStep("cycle %d of %d" % (cycle, n_cycles),
                                                  self.cycle_iterations, cycle,
                                                  local_iterations=self.step_local_iterations()))
        return progress.Plan(steps, earliest_stop=earliest_stop,
                             expected_stop=min(expected_stop, n_cycles),
                             # X-ray: half the allowance (the QM stages of 1va7 and
                             # 3kyi took 3 of 3, the full protocol 1 of 6)
                             expected_extra_trials=(self.max_extra_trials + 1) // 2
                             if self.score == "r_free" else 0)

    @staticmethod
    def _trial_label(cycle, k):
        return "cycle %d weight trial %d" % (cycle, k + 1)

    def _trial(self, scale, start, cycle, k=0):
        self.set_state(start)
        self._minimise(scale, self._trial_label(cycle, k), self.trial_iterations, trial=True)
        s = self.measure(cycle)
        bond, angle = self.geometry(self.model.get_sites_cart())
        if self.score == "map_cc" and self.limits.max_clashscore is not None:
            self.validate(s)      # maps: the weight must not buy the fit with clashes
        return weights_mod.Trial(scale=scale, r_work=s.r_work, r_free=s.r_free,
                                 bond_rmsd=bond, angle_rmsd=angle, map_cc=s.map_cc,
                                 clashscore=s.clashscore,
                                 broken_bonds=len(self.broken_bonds()))

    def _run_trials(self, scales, cycle):
        """Refine from the same start with each scale and keep the chosen one.
        While no trial meets the limits, the search goes on toward stronger
        restraints (halving the smallest scale), as phenix.refine's weight
        optimisation does, up to MAX_EXTRA_TRIALS more trials."""
        start = self.get_state()
        trials, states = [], []
        for k, scale in enumerate(scales):
            trials.append(self._trial(scale, start, cycle, k))
            states.append(self.get_state())
        best = weights_mod.choose(trials, self.limits, score=self.score)
        for _ in range(self.max_extra_trials):
            if weights_mod.meets_limits(best, self.limits, self.score):
                break
            strongest = min(trials, key=lambda t: t.scale)
            trials.append(self._trial(strongest.scale / 2, start, cycle, len(trials)))
            states.append(self.get_state())
            best = weights_mod.choose(trials, self.limits, score=self.score)
            new = trials[-1]
            if weights_mod.meets_limits(new, self.limits, "geometry") and \
                    new.gap is not None and strongest.gap is not None and \
                    new.gap >= strongest.gap - GAP_STEP_MIN:
                # stronger restraints no longer shrink the gap: it is not
                # coordinate over-fitting (B, model errors), so stop here
                break
        self._trial_verdicts(trials)
        if self.reporter is not None:     # planned extra trials that were not needed
            self.reporter.drop_steps("cycle %d weight trial " % cycle)
        self._trial_states = states
        self.set_state(states[trials.index(best)])
        s = self.measure(cycle)
        s.weight = best.scale
        s.note = "weight from %d trials" % len(trials)
        return best.scale, trials, s

    def trial_scales(self, cycle, scale):
        """The full list in the first cycle; around the current weight later
        (weight_search=every), so the weight follows the model as it improves."""
        if scale is None:
            return list(self.params.weight_trials)
        return [scale / 2, scale, scale * 2]

    def searches_every_cycle(self):
        mode = self.params.weight_search
        if mode == "auto":
            return not self.quantum     # trials cost a minimisation each
        return mode == "every"

    def before_first_cycle(self):
        """Hook before the first coordinate step (X-ray: fit B to the data, so
        coordinates do not compensate for B of another refinement)."""

    def after_sites(self, cycle, stats):
        """Hook after the coordinate step of a cycle (X-ray: ADP refinement)."""

    def broken_bonds(self):
        """Library bonds the QM energy broke or formed, as texts (none for
        library restraints, which never break one)."""
        return stats_mod.broken_bonds(self.model) if self.quantum else []

    def validate(self, stats):
        if self.validator is not None:
            self.validator(self.model, stats)

    def run(self, fixed_scale=None):
        p = self.params
        self._fixed_scale = fixed_scale
        grm = self.model.get_restraints_manager().geometry
        if self.reporter is not None and hasattr(grm, "set_observer"):
            grm.set_observer(self.reporter)    # told every QM gradient, the start's too
        resumed = self.checkpoint_state
        if resumed:
            result = RefinementResult.from_dict(resumed, self.limits)
            self._states = {0: resumed["start_state"],
                            resumed["best_index"]: resumed["best_state"]}
            self._best = (resumed["best_index"], resumed["best_state"])
            self.set_state(resumed["state"])
            print("Resuming after cycle %d (weight scale %g)" % (
                len(result.cycles), result.scale), file=self.log)
            print(stats_mod.HEADER, file=self.log)
            for s in [result.start] + result.cycles:
                self._print(s)
        else:
            t0 = time.perf_counter()
            start = self._fill_common(self.measure("start"), t0, 0, 0.0)
            start.cycle = 0
            self.validate(start)
            result = RefinementResult(start=start, scale=fixed_scale, limits=self.limits)
            self._states = {0: self.get_state()}
            self._best = (0, self._states[0])
            print(stats_mod.HEADER, file=self.log)
            self._print(start)
        # maps judge trials and cycles by it; both modes raise the data weight
        # only while it makes no new clashes (1va7, GFN2 after the library
        # stage: data x2 twice, clashscore 2.5 -> 6.1 -> 8.1)
        if result.start.clashscore is not None:
            self.limits.max_clashscore = result.start.clashscore
        n_cycles = p.macro_cycles if self.uses_data or p.macro_cycles else 1
        if self.reporter is not None:
            self.reporter.plan(self.plan(result, n_cycles))
        for cycle in range(len(result.cycles) + 1, n_cycles + 1):
            label = "cycle %d of %d" % (cycle, n_cycles)
            t0 = time.perf_counter()
            if self.reporter is not None:
                self.reporter.begin_cycle(cycle)
            calls0, seconds0 = stats_mod.engine_counters(self.model)
            previous_sites = np.array(self.get_sites())
            if cycle == 1:
                self.before_first_cycle()
            searching = self.uses_data and fixed_scale is None and not result.annealing and (
                result.scale is None or self.searches_every_cycle())
            annealing = result.annealing
            if annealing:
                result.scale /= 2
                self._minimise(result.scale, label)
                s = self.measure(cycle)
                s.add_note("annealing: restraints x2")
            elif searching:
                first_search = result.scale is None
                result.scale, trials, s = self._run_trials(
                    self.trial_scales(cycle, result.scale), cycle)
                result.trials.extend(trials)
                self._note_over_fitting_trials(result, trials)
                if first_search:
                    self._maybe_anneal(result, trials, s)
            elif result.scale is None:
                result.scale = 1.0
                self._minimise(1.0, label)
                s = self.measure(cycle)
            else:
                self._minimise(result.scale, label)
                s = self.measure(cycle)
            s.cycle = cycle
            s.weight = result.scale if self.uses_data else None
            self.after_sites(cycle, s)
            self._fill_common(s, t0, calls0, seconds0)
            if annealing and weights_mod.meets_limits(s, self.limits, "geometry"):
                result.annealing = False
                s.add_note("geometry within limits: annealing done")
            self.validate(s)
            s.seconds = time.perf_counter() - t0
            over_fitted = False
            if self.uses_data and fixed_scale is None and not self.searches_every_cycle() \
                    and not result.annealing and cycle < n_cycles:
                over_fitted = self._adapt_weight(result, s)
            broken = self.broken_bonds()
            if broken:
                s.broken_bonds = len(broken)
                s.add_note("covalent bonds broken or formed")
            self._print(s)
            result.cycles.append(s)
            self._keep_best(result)
            if self.reporter is not None:    # the stops move with the best model
                self.reporter.end_cycle()
                self.reporter.plan(self.plan(result, n_cycles))
            if over_fitted and self._best[0] != cycle:
                # going on from an over-fitted model spends the next cycle undoing
                # it (3kyi chain B, map, GFN2: clashscore 1.9 -> 29 -> 36 at the
                # same weight); the best model so far is the better start
                self.set_state(self._best[1])
                if not self._stale(result):
                    best = "cycle %d" % self._best[0] if self._best[0] else "the start model"
                    print("  cycle %d starts from %s, the best model so far" % (cycle + 1, best),
                          file=self.log)
            if broken:
                result.stopped = ("covalent bonds broke or formed in cycle %d: %s. Stopped;"
                                  " the model handed back is the best one before. Causes:"
                                  " wrong charges or protonation, vacuum for a charged"
                                  " model (try qm_restraints.engine_options.solvent=water),"
                                  " or a data weight too strong (refinement.weight)."
                                  % (cycle, "; ".join(broken)))
                print(result.stopped, file=self.log)
                break
            shift = np.abs(np.array(self.get_sites()) - previous_sites).max() if len(
                previous_sites) else 0.0
            if self.checkpoint is not None:
                self.checkpoint.save(dict(self.checkpoint_meta(), **result.as_dict(),
                                          reference_ratio=self._reference_ratio,
                                          start_state=self._states[0],
                                          best_index=self._best[0],
                                          best_state=self._best[1],
                                          state=self.get_state()),
                                     self.get_sites())
            if self._converged(result, shift):
                result.converged = True
                print("Converged: R and coordinate shifts below tolerance (max shift %.4f A)"
                      % shift, file=self.log)
                break
            if self._stale(result):
                result.converged = True
                print("Stopped: %s in the last %d cycles (best: cycle %d)"
                      % (self.no_progress(), self.stale_cycles, self._best[0]),
                      file=self.log)
                break
        self._hand_back(result)
        return result

    def _stale(self, result):
        """stale_cycles cycles since the last progress: stop; unless the next
        cycle tries the remedy for an over-fitted one."""
        return self.uses_data and not result.annealing and \
            not self._remedy_next(result) and \
            len(result.cycles) - self._last_progress(result) >= self.stale_cycles

    def _last_progress(self, result):
        """The latest cycle that brought the model handed back or (X-ray) a
        new lowest R-free (best_model.latest_r_free_record)."""
        if not self._counts_r_free_records():
            return self._best[0]
        return max(self._best[0], best_model.latest_r_free_record(
            result.start, result.cycles, self.limits))

    def _counts_r_free_records(self):
        return self.score == "r_free"

    def no_progress(self):
        """What the stale rule counts as a cycle without progress, for the log."""
        return "no better model" + (
            " and no lower R-free" if self._counts_r_free_records() else "")

    def _remedy_next(self, result):
        """X-ray: the last cycle over-fitted (R gap over the limit) and the next
        runs with stronger restraints, at a weight no cycle has had.  That cycle
        tests the remedy, so the over-fitted one is no sign that refinement is
        done: 3kyi, GFN2 after the library stage, stopped after cycle 2
        over-fitted at 1/64 and handed back the library model (53 poor H-bonds);
        another run reached its best QM model (R-free 0.3080, 36 poor) in cycle
        3, after two restraints x2.  At most MAX_SAFETY_STEPS such cycles.
        Maps are not given them: after the first cycle, the 3kyi chain's map
        cycles made new clashes at every weight tried (24.7, 16.7)."""
        if self.score != "r_free" or not result.cycles or result.scale is None:
            return False
        last = result.cycles[-1]
        tried = {c.weight for c in result.cycles}
        return not self.limits.gap_ok(last.r_work, last.r_free) and \
            last.weight is not None and result.scale < last.weight and \
            result.scale not in tried

    def _maybe_anneal(self, result, trials, s):
        """Far from the data, the weight within the geometry limits is too weak
        to move the model into the right place: every strong-data trial has a
        much lower R-free, with distorted geometry.  Then take the trial with
        the lowest R-free and halve its scale each cycle until geometry is
        within the limits (weight annealing; four 1.5 A helix starts, library
        restraints: mean R-free 0.31 -> 0.16; docs/refinement.md)."""
        mode = self.params.anneal
        if mode == "off" or self.score != "r_free":
            return
        # a QM energy does not pull broken bonds back together as harmonic
        # library terms do (PM7, 1.5 A helix start, scale 2: bond rmsd 0.64 A,
        # never recovered): QM anneals only from trials with bonds still
        # within ANNEAL_QM_BOND_FACTOR x the limit and none broken. A 10-
        # iteration trial can be within the factor with a bond broken (PM7,
        # 1.5 A start: bonds 0.075 A, CA-C 1.97 A; the run stopped there)
        usable = [t for t in trials if t.r_free is not None and (not self.quantum or (
            t.bond_rmsd <= ANNEAL_QM_BOND_FACTOR * self.limits.bond_rmsd
            and not t.broken_bonds))]
        if not usable:
            return
        lowest = min(usable, key=lambda t: t.r_free)
        chosen_r_free = s.r_free
        gain = chosen_r_free - lowest.r_free
        if mode == "auto" and gain < ANNEAL_MIN_R_FREE_GAIN:
            return
        if lowest.scale <= result.scale:
            return
        result.annealing = True
        result.scale = lowest.scale
        self.set_state(self._trial_states[trials.index(lowest)])
        m = self.measure(s.cycle)    # geometry is measured with the cycle's other numbers
        s.r_work, s.r_free = m.r_work, m.r_free
        s.weight = result.scale
        s.add_note("far from the data (trial R-free %.4f vs %.4f within limits):"
                   " annealing from scale %g" % (lowest.r_free, chosen_r_free, lowest.scale))

    def _note_over_fitting_trials(self, result, trials):
        """A trial whose R gap is over its limit by more than the noise
        (GAP_STEP_MIN) marks a weight that over-fits, which data x2 must not
        go back to: 3kyi, GFN2 after the library stage, took data x2 from
        the chosen 1/64 (gap 0.060) to 1/32, whose trial had shown gap 0.068,
        and the cycle over-fitted (gap 0.093, R-free 0.3107 -> 0.3190).
        Trials shorter than the cycles (QM: 10 iterations against 25) mark
        it when over the limit at all, as the gap grows with the iterations:
        1va7, GFN2, trials 1/32 gap 0.061 and 1/64 0.054, cycles from one
        model 0.073 and 0.061; data x2 to 1/32 cost a cycle."""
        if self.score != "r_free":
            return
        noise = GAP_STEP_MIN if self.trial_iterations >= self.cycle_iterations else 0.0
        over = [t.scale for t in trials if t.gap is not None
                and t.gap > self.limits.gap_allowed(t.r_free) + noise]
        known = [] if result.over_fitting_scale is None else [result.over_fitting_scale]
        if over:
            result.over_fitting_scale = min(over + known)

    def _adapt_weight(self, result, s):
        """Between searches: the study's rules on the fixed weight.  Restraints
        x2 while heavy-atom bonds or angles (or the R gap) are over the limit, at most
        MAX_SAFETY_STEPS times (a QM minimum can itself sit near the library
        limit: PM7 ~0.025 A; halving without end switched the data off), for
        geometry more while they work (_tightening_works);
        data x2 when geometry is well inside the limits.  True when the cycle
        over-fitted (R gap, or for maps clashscore, over the limit) and the
        restraints were strengthened for it."""
        over = [what for what, value, limit in (
            ("bonds", s.bond_rmsd, self.limits.bond_rmsd),
            ("angles", s.angle_rmsd, self.limits.angle_rmsd)) if value > limit]
        n_geometry = len(over)
        if self.score == "r_free" and not self.limits.gap_ok(s.r_work, s.r_free):
            # over-fitting: a QM energy is softer than library terms, and with
            # the weight fixed after the first search R-work kept falling while
            # R-free did not (1va7, GFN2 after the library stage: gap 0.050 ->
            # 0.071 -> 0.088, clashscore 4.3 -> 11.7 in two cycles)
            over.append("R-free - R-work")
        if self.score == "map_cc" and not self.limits.clash_ok(s.clashscore):
            # maps have no free set: new clashes are how a too strong map weight
            # shows (atoms crowd into density peaks)
            over.append("clashscore")
        over_fitted = len(over) > n_geometry
        if over_fitted:
            result.over_fitting_scale = min(result.scale, result.over_fitting_scale or
                                            result.scale)
        if over and (result.safety_steps < MAX_SAFETY_STEPS
                     or self._tightening_works(result, s, over_fitted)):
            result.safety_steps += 1
            result.scale /= 2
            s.add_note("%s over limit: restraints x2 next cycle" % " and ".join(over))
            return over_fitted
        elif (result.raise_steps < MAX_RAISE_STEPS
              # never back to a weight that over-fitted (1va7, full QM protocol:
              # data x2 and restraints x2 took turns, 0.0625 <-> 0.125)
              and (result.over_fitting_scale is None
                   or 2 * result.scale < result.over_fitting_scale)
              and s.bond_rmsd < RAISE_BELOW_FRACTION * self.limits.bond_rmsd
              and s.angle_rmsd <= self.limits.angle_rmsd
              and self.limits.gap_ok(s.r_work, s.r_free)
              and self.limits.clash_ok(s.clashscore)):
            result.raise_steps += 1
            result.scale *= 2
            s.add_note("geometry well inside limits: data x2 next cycle")
        return False

    def _tightening_works(self, result, s, over_fitted):
        """Another restraints x2 past MAX_SAFETY_STEPS: only for bonds or
        angles (not over-fitting), and only while the last step brought them
        closer to the limits."""
        if over_fitted or not result.cycles or result.safety_steps >= MAX_GEOMETRY_STEPS:
            return False
        excess = lambda c: max(c.bond_rmsd / self.limits.bond_rmsd,
                               c.angle_rmsd / self.limits.angle_rmsd)
        return excess(s) < excess(result.cycles[-1])

    def _keep_best(self, result):
        """Remember every candidate of this process (a few MB at most) and
        the current choice, which the checkpoint carries."""
        self._states[len(result.cycles)] = self.get_state()
        index, _ = self._choose(result)
        self._best = (index, self._states[index])

    def state_of(self, index):
        """The stored model of candidate `index` (0 = start), or the current one."""
        return self._states.get(index, self.get_state())

    def _choose(self, result):
        index, why = best_model.choose(result.start, result.cycles, self.limits,
                                       self.score if self.uses_data else None,
                                       self.r_free_ceiling)
        if index not in self._states:   # a cycle from before a resume
            index = len(result.cycles)
            why = "cycle %d (the choice %s was made before the resume)" % (index, why)
        return index, why

    def _hand_back(self, result):
        index, why = self._choose(result)
        result.selected = index
        result.selection_note = why
        if index != len(result.cycles):
            self.set_state(self._states[index])
        print("Model handed back: %s" % why, file=self.log)

    def checkpoint_meta(self):
        return {}

    def _converged(self, result, shift):
        if len(result.cycles) < 2:
            return False
        a, b = result.cycles[-2], result.cycles[-1]
        if shift > self.params.shift_tolerance:
            return False
        for x, y in ((a.r_work, b.r_work), (a.r_free, b.r_free), (a.map_cc, b.map_cc)):
            if x is not None and y is not None and abs(x - y) > self.params.r_tolerance:
                return False
        return True


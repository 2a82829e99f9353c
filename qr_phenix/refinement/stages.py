"""Library first, then quantum: QM refinement of a whole entry at a cost users accept.

A fragmented QM gradient of a real entry costs seconds (1va7, 3.9k atoms,
GFN2, 126 fragments: ~10 s on 2 processes); a library gradient costs
milliseconds.  Most of what refinement does from a deposited start (B,
bulk solvent and scales, the overall fit of side chains) needs no QM, and
the full QM protocol (5 weight trials, then up to 10 macro-cycles of 25
iterations) spent ~400 QM gradients on it (1va7, 3kyi; trials of 25
iterations then, 10 now).  With `library_stage` on:

1. library stage: the whole library protocol (weight search every cycle,
   B, the never-worse choice) until it converges or stops;
2. QM stage: from the model the library stage hands back, short weight
   trials (`qm_weight_trials`, `qm_trial_iterations` iterations each; on
   local QM models by default, `local_iterations`) and up to
   `qm_macro_cycles` macro-cycles with QM restraints, stopping when
   QM_STALE_CYCLES cycles brought neither a better model nor (X-ray) a
   lower R-free (X-ray: not while the next cycle tries stronger restraints
   after an over-fitted one).

The model handed back is the QM stage's choice among its cycles.  The
library model is the QM stage's start, not its rival: it is handed back only
when no QM model is within the limits or within the noise of its R-free
(qm_r_free_ceiling).  A QM model whose R-free is more than
best_model.R_FREE_TOLERANCE above the input's is never handed back.

Resume: the library stage checkpoints to <prefix>.library.checkpoint.json
and marks it finished with its result; the QM stage uses <prefix>.checkpoint.json.
"""

import copy
import sys
import time

from libtbx import Auto
from libtbx.utils import Sorry

from qr_phenix import qm_expansion
from qr_phenix.refinement import best_model
from qr_phenix.refinement.checkpoint import Checkpoint
from qr_phenix.refinement.driver import RefinementResult

# The QM stage starts from a converged library model, so a cycle that is not
# better and the restraints x2 after it are enough to stop: 3kyi (X-ray) and
# its chain B (map), GFN2, each over-fitted in every cycle after the first
# (R gap over the limit; clashscore 1.9 -> 30.9, 16.7, 10.5), restarting from
# cycle 1 each time, and the last such cycle cost ~370 s and ~140 s for nothing.
QM_STALE_CYCLES = 2

master_phil_str = """
library_stage = Auto
  .type = bool
  .help = "QM runs: refine with library restraints first (weights every cycle, \
           B) until converged, then continue from that model with QM \
           restraints for qm_macro_cycles. Auto: on when the QM energy comes \
           from fragments (whole entries, where a QM gradient costs seconds) \
           and every residue has library restraints"
  .short_caption = Library stage before QM
qm_macro_cycles = 5
  .type = int
  .help = "Macro-cycles with QM restraints after the library stage (the \
           first is the weight search's chosen trial)"
qm_weight_trials = 0.03125 0.0625 0.125
  .type = floats
  .help = "Weight scales tried at the start of the QM stage (smaller ones \
           follow while none meets the limits, at most qm_extra_trials). \
           Lower than weight_trials: the scale multiplies |g_QM|/|g_data| \
           at the library stage's model, where the data gradient is small"
qm_trial_iterations = 10
  .type = int
  .help = "L-BFGS iterations of each weight trial with QM restraints, in the \
           QM stage and in QM runs without a library stage (the macro-cycles \
           use max_iterations; library trials too)"
qm_local_iterations = Auto
  .type = int
  .help = "L-BFGS iterations per QM gradient in the minimisations that \
           qm_local_scope names: between QM gradients the minimiser steps on \
           the QM energy to first order about the last QM point plus \
           GFN-FF's curvature (xtb program; qr_phenix/qm_expansion.py), and \
           the next QM gradient is taken where those steps end. 0: a QM \
           gradient at every step. Auto: 10 in the weight trials when the QM \
           energy comes from fragments (whole entries) and GFN-FF was \
           measured to fit the engine (GFN2), else 0; 3kyi then took 109 QM \
           gradients instead of 168 at R-free +0.0009 (docs/refinement.md)"
qm_local_scope = all *weight_trials
  .type = choice
  .help = "Where qm_local_iterations applies: the weight trials only (each \
           then costs about one QM gradient; the macro-cycles take a QM \
           gradient at every step, so the model handed back is refined on QM \
           itself), or all minimisations (macro-cycles of 2 x max_iterations \
           on local models: 7-11x fewer QM gradients than exact QM, R-free \
           0.002-0.003 above it on 1va7 and 3kyi)"
qm_extra_trials = 3
  .type = int
  .help = "QM stage: at most this many trials toward stronger restraints \
           when no trial meets the limits"
"""


def use_library_stage(params, quantum, uses_data, fragments_on, unrestrained):
    """(on, why) for refinement.library_stage."""
    wanted = params.library_stage
    if not quantum:
        return False, "library restraints only"
    if not uses_data:
        return False, "geometry-only run"
    if unrestrained:
        if wanted is True:
            raise Sorry("refinement.library_stage=True, but %s have no library restraints;"
                        " supply a dictionary for them or set refinement.library_stage=False."
                        % ", ".join(unrestrained))
        return False, "no library restraints for %s" % ", ".join(unrestrained)
    if wanted is None or wanted is Auto:
        if fragments_on:
            return True, "QM from fragments (each gradient costs seconds)"
        return False, "whole-model QM of a small model"
    return bool(wanted), "refinement.library_stage=%s" % bool(wanted)


#: qm_local_iterations=Auto with fragments: a 10-iteration weight trial is one
#: local model about the trials' common start, so the trials cost ~1 QM
#: gradient in all (3kyi: 5 trials, 1 gradient, where exact ones took ~55)
AUTO_LOCAL_ITERATIONS = 10


def local_iterations(params, quantum, fragments_on, engine):
    """(k, why) for refinement.qm_local_iterations: k L-BFGS steps per QM
    gradient where qm_local_scope says, 0 for a QM gradient at every step."""
    wanted = params.qm_local_iterations
    if not quantum:
        return 0, "library restraints only"
    if wanted is not None and wanted is not Auto:
        return max(0, int(wanted)), "refinement.qm_local_iterations=%s" % wanted
    if not fragments_on:
        return 0, "whole-model QM of a small model: a QM gradient costs little"
    if engine not in qm_expansion.MEASURED_ENGINES:
        return 0, "GFN-FF's curvature was not measured to fit %s's" % engine
    return AUTO_LOCAL_ITERATIONS, "QM from fragments, where each gradient costs seconds"


def qm_r_free_ceiling(input_r_free, library_r_free, limits):
    """The highest R-free of a QM model that the QM stage hands back: the
    library model's plus the noise of R-free (limits.r_free_noise, at least
    R_FREE_TOLERANCE), and never above the input's plus R_FREE_TOLERANCE.
    Below the noise the fits are equal and the QM geometry is what the run
    was for: 3kyi (286 free reflections, noise 0.018), GFN2, QM cycle 1 had
    R-free 0.3107, clashscore 0.6 and 46 poor H-bonds, the library model
    0.3066, 1.7 and 53; the library model had been handed back."""
    if input_r_free is None or library_r_free is None:
        return None
    tolerance = best_model.R_FREE_TOLERANCE
    return min(input_r_free + tolerance,
               library_r_free + max(tolerance, limits.r_free_noise(library_r_free)))


def qm_stage_params(params):
    """The refinement extract for the QM stage: its cycles and trials."""
    p = copy.deepcopy(params)
    p.macro_cycles = params.qm_macro_cycles
    p.weight_trials = list(params.qm_weight_trials)
    return p


class StagedRefinement:
    """Runs the library stage, then the QM stage; looks like one refinement
    (run, state_of, set_state, fmodel, k_mask_max) to the program.

    make(quantum, params, checkpoint, state, fmodel) builds one stage's
    MacroCycleRefinement on the shared model (the QM stage installs the QM
    restraints and reuses the library stage's fmodel); restore(checkpoint)
    checks that a checkpoint belongs to this job, puts its coordinates on the
    model and returns its state.
    """

    def __init__(self, make, restore, params, prefix, resume, log=sys.stdout,
                 fingerprint=None, reporter_factory=None):
        self.make = make
        self.restore = restore
        self.params = params
        self.library_checkpoint = Checkpoint(prefix + ".library")
        self.qm_checkpoint = Checkpoint(prefix)
        self.resume = resume
        self.log = log
        self.fingerprint = fingerprint
        self.reporter_factory = reporter_factory
        self.library = None
        self.quantum = None
        self.library_result = None
        self.qm_result = None
        self._library_states = {}

    # -- the refinement interface the program uses ------------------------------
    @property
    def fmodel(self):
        return getattr(self.library, "fmodel", None)

    def k_mask_max(self):
        return self.library.k_mask_max()

    def set_state(self, state):
        (self.quantum or self.library).set_state(state)

    def state_of(self, index):
        n_library = len(self.library_result.cycles)
        if index <= n_library:
            return self._library_states.get(index) or self.library.state_of(index)
        return self.quantum.state_of(index - n_library)

    def remove_checkpoints(self):
        self.library_checkpoint.remove()
        self.qm_checkpoint.remove()

    # -- stages -----------------------------------------------------------------
    def _load(self, checkpoint):
        if not (self.resume and checkpoint.exists()):
            return None
        return self.restore(checkpoint)

    def run(self, fixed_scale=None):
        print("\n=== Library stage: library restraints until converged, then QM ===",
              file=self.log)
        library_seconds = self._library_stage(fixed_scale)
        print("\n=== QM stage: up to %d macro-cycles from the library stage's model"
              " (stops when %d bring %s) ==="
              % (self.params.qm_macro_cycles, QM_STALE_CYCLES, self.library.no_progress()),
              file=self.log)
        self.quantum = self.make(True, qm_stage_params(self.params), self.qm_checkpoint,
                                 self._load(self.qm_checkpoint), self.fmodel)
        self.quantum.checkpoint_meta = lambda: {"fingerprint": self.fingerprint}
        self.quantum.max_extra_trials = self.params.qm_extra_trials
        self.quantum.stale_cycles = QM_STALE_CYCLES
        self.quantum.r_free_ceiling = qm_r_free_ceiling(
            self.library_result.start.r_free, self.library_result.final.r_free,
            self.quantum.limits)
        if self.reporter_factory is not None:
            # the library stage's time per iteration and per cycle outside the
            # minimisations: the QM stage's time outside the QM engine (data
            # target, B, validation) until its own is measured
            lib = self.library
            self.quantum.reporter = self.reporter_factory(
                lib.minimisation_seconds / max(1, lib.minimisation_iterations),
                max(0.0, library_seconds - lib.minimisation_seconds)
                / max(1, len(self.library_result.cycles)))
        self.qm_result = self.quantum.run(fixed_scale=fixed_scale)
        return self.combined()

    def _library_stage(self, fixed_scale):
        """Run (or resume, or take from its finished checkpoint) the library
        stage; returns its wall time."""
        t0 = time.perf_counter()
        saved = self._load(self.library_checkpoint)
        if saved is not None and saved.get("finished"):
            self.library = self.make(False, self.params, None, None, None)
            self.library_result = RefinementResult.from_dict(saved["result"],
                                                             self.library.limits)
            self._library_states = {int(k): v for k, v in saved["states"].items()}
            self.library.set_state(saved["states"][str(self.library_result.selected)])
            print("Library stage finished before the interruption: continuing with the"
                  " model it handed back (cycle %d)" % self.library_result.selected,
                  file=self.log)
            return saved.get("seconds", 0.0)
        self.library = self.make(False, self.params, self.library_checkpoint, saved, None)
        self.library.checkpoint_meta = lambda: {"fingerprint": self.fingerprint}
        self.library_result = self.library.run(fixed_scale=fixed_scale)
        chosen = self.library_result.selected
        self._library_states = {0: self.library.state_of(0),
                                chosen: self.library.state_of(chosen)}
        seconds = time.perf_counter() - t0
        self.library_checkpoint.save(
            {"fingerprint": self.fingerprint, "finished": True,
             "result": self.library_result.as_dict(), "seconds": seconds,
             "states": {str(k): v for k, v in self._library_states.items()}},
            self.library.model.get_sites_cart())
        return seconds

    def combined(self):
        """One result: the input as start, library then QM cycles, the choice."""
        lib, qm = self.library_result, self.qm_result
        n = len(lib.cycles)
        cycles = list(lib.cycles)
        for c in qm.cycles:
            c = copy.copy(c)
            c.cycle = n + c.cycle
            c.note = ("QM; " + c.note) if c.note else "QM"
            cycles.append(c)
        result = RefinementResult(start=lib.start, cycles=cycles,
                                  trials=list(lib.trials) + list(qm.trials), scale=qm.scale,
                                  limits=qm.limits, converged=qm.converged,
                                  stopped=qm.stopped)
        if qm.selected:
            result.selected = n + qm.selected
            result.selection_note = "QM stage %s" % qm.selection_note
        else:
            result.selected = lib.selected
            result.selection_note = "library stage %s (QM stage: %s)" % (
                lib.selection_note, qm.selection_note)
        return result


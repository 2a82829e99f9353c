"""What a QM run will cost, told while it runs.

A fragmented QM gradient of a real entry takes seconds to minutes (1va7,
3.9k atoms, GFN2, 126 fragments: ~10 s on 2 processes), and a refinement
needs a hundred or more of them.  The reporter is told the plan (the
minimisations still to come and their iteration limits), each QM gradient's
time (from the restraints manager) and each finished fragment (from the
fragment executor).  It prints:

* after the first QM gradient its time; after the fifth the time per
  gradient (from the third on, the first along a minimisation) and an
  estimate for the run, with its range;
* at most every `interval` seconds while a step runs: gradients done, the
  time per gradient, and the estimated time left (fragments done too when
  one gradient outlasts the interval);
* after each step, nothing: the cycle table has the numbers; the estimate
  is only re-calibrated.

Time of a plan = (QM gradients planned) x (time per gradient) + (iterations
planned) x (time per iteration outside the QM engine) + (cycles planned) x
(time per cycle outside the minimisations).  The second term is the data
target, L-BFGS and, with local models of the QM energy, GFN-FF; the third is
B refinement, validation and the R factors.  With 10 L-BFGS steps per QM
gradient the last two are most of the time (1va7: 80 of 200 s per cycle in
the engine), so leaving the third out made the estimate 32 % short.  All
three are measured as the run goes; before the first finished step and
cycle they are taken as `calls_per_iteration_guess` (with local models of
the QM energy: one gradient per `local_iterations` steps) and the caller's
`overhead_per_iteration` and `overhead_per_cycle` (the library stage's,
when there was one).  What is not known in advance is how
many weight trials and macro-cycles run: extra trials toward stronger
restraints follow only while no trial meets the limits, and the run stops
once stale_cycles cycles brought neither a better model nor a lower
R-free (QM stage: 2).  The plan
(Plan, from the driver) says where the run may stop at the earliest, where
it is expected to stop and how many extra trials to expect; the line prints
the expected figure with both ends: the earliest stop without extra trials
and every cycle with every extra trial.
"""

import sys
import time
from dataclasses import dataclass, field
from typing import List, Optional

#: QM gradients per L-BFGS iteration before any step is measured: mmtbx's
#: minimisers evaluate once per iteration, plus line-search retries (1va7,
#: GFN2: 72 gradients for 6 trials of 10 iterations, 27 for a 25-iteration cycle)
CALLS_PER_ITERATION = 1.1
RECENT = 5   # gradients averaged for the time per gradient
#: The first QM gradient is from scratch (engines set up, no wavefunction), the
#: second a restart at the same geometry (3kyi, GFN2, 2 processes: 19.1 s,
#: 8.8 s), so the time per gradient is taken from the third on, the first
#: along a minimisation.  One such gradient is a noisy sample (1va7 full
#: protocol: 19.2 s; the mean of the 3rd-5th 16.9 s; of the run's 404 15.6 s),
#: so the estimate waits for the fifth.
FIRST_ALONG_A_MINIMISATION = 3
FIRST_ESTIMATE_AFTER = 5


@dataclass(frozen=True)
class PlannedStep:
    label: str
    iterations: int
    cycle: int
    optional: bool = False     # an extra weight trial: runs only while no trial meets the limits
    local_iterations: int = 0  # L-BFGS steps per QM gradient (local QM models); 0: one per step


@dataclass(frozen=True)
class FinishedStep:
    """A minimisation that ran: what the estimate for the steps to come is
    calibrated from."""
    overhead: float            # seconds outside the QM engine
    iterations: int            # its iteration limit
    local_iterations: int      # as PlannedStep
    calls: int                 # QM gradients it took

    @property
    def expansions(self):
        """Local QM models it was planned to take (one per local_iterations steps)."""
        return -(-self.iterations // self.local_iterations)


@dataclass
class Plan:
    """The minimisations still to come and where the run may stop.
    earliest_stop: the first cycle after which the stale rule can end the run;
    expected_stop: the cycle it is expected to end after; expected_extra_trials:
    how many of the optional steps are expected to run."""
    steps: List[PlannedStep] = field(default_factory=list)
    earliest_stop: Optional[int] = None
    expected_stop: Optional[int] = None
    expected_extra_trials: int = 0

    def steps_to(self, stop, extra_trials):
        """The steps up to cycle `stop` (None: all), with the first
        `extra_trials` optional ones."""
        chosen, extras = [], 0
        for step in self.steps:
            if stop is not None and step.cycle > stop:
                continue
            if step.optional:
                if extras >= extra_trials:
                    continue
                extras += 1
            chosen.append(step)
        return chosen


def minutes(seconds):
    """A duration as people read it; short ones (a helix gradient takes
    0.1-0.3 s) with the digits that tell them apart."""
    if seconds < 1:
        return "%.2f s" % seconds
    if seconds < 10:
        return "%.1f s" % seconds
    if seconds < 90:
        return "%.0f s" % seconds
    if seconds < 5400:
        return "%.0f min" % (seconds / 60.0)
    return "%.1f h" % (seconds / 3600.0)


class CostReporter:

    def __init__(self, log=sys.stdout, interval=60.0, overhead_per_iteration=0.0,
                 overhead_per_cycle=0.0, clock=None, t0=None):
        self.log = log
        self.interval = float(interval)
        self.clock = clock or time.perf_counter
        self.t0 = self.clock() if t0 is None else t0   # the run's start
        self.iteration_overhead_guess = float(overhead_per_iteration)
        self.cycle_overhead_guess = float(overhead_per_cycle)
        #: gradients per iteration before a step is measured
        self.calls_per_iteration_guess = CALLS_PER_ITERATION
        #: k when k L-BFGS steps of the step under way share one QM gradient
        #: (qm_expansion.py; from the driver): a minimisation of n iterations
        #: then takes ceil(n/k) (3kyi: 1 per 10-iteration trial, 3-4 per
        #: 25-iteration cycle); 0: one or more per iteration
        self.step_local_iterations = 0
        self.planned = Plan()         # the minimisations still to come
        self.step_label = None
        self.step_iterations = 0
        self.step_t0 = None
        self.step_calls = 0
        self.step_engine = 0.0
        self.gradient_times = []
        self.calls_done = 0
        self.calls_outside_steps = 0
        self.finished_steps = []      # FinishedStep, in order
        self.cycle = None             # the macro-cycle under way
        self.cycle_t0 = None
        self.cycle_step_wall = 0.0    # wall time of its finished minimisations
        self.cycle_overheads = []     # seconds outside minimisations per finished cycle
        self.last_print = None
        self.last_call_end = None
        self.estimates = []           # (elapsed, estimated total) as printed
        self.earliest_estimate = None  # the first estimate's range: earliest stop ...
        self.all_cycles_estimate = None  # ... and every planned cycle and trial

    # -- told by the driver --------------------------------------------------------
    def plan(self, planned):
        """The minimisations still to come (a Plan)."""
        self.planned = planned

    def begin_cycle(self, cycle):
        self.cycle = cycle
        self.cycle_t0 = self.clock()
        self.cycle_step_wall = 0.0

    def end_cycle(self):
        if self.cycle_t0 is None:
            return
        wall = self.clock() - self.cycle_t0
        self.cycle_overheads.append(max(0.0, wall - self.cycle_step_wall))
        self.cycle_t0 = self.cycle = None

    def begin_step(self, label, iterations, local_iterations=0):
        self.step_label = label
        self.step_iterations = int(iterations)
        self.step_local_iterations = int(local_iterations)
        self.step_t0 = self.clock()
        self.step_calls = 0
        self.step_engine = 0.0
        self.last_call_end = self.step_t0
        steps = self.planned.steps
        labels = [step.label for step in steps]
        if label in labels:
            step = steps.pop(labels.index(label))
            if step.optional and self.planned.expected_extra_trials:
                self.planned.expected_extra_trials -= 1

    def drop_steps(self, prefix):
        """Planned steps that will not run (a weight search that ended early)."""
        self.planned.steps = [step for step in self.planned.steps
                              if not step.label.startswith(prefix)]

    def end_step(self):
        if self.step_t0 is None:
            return
        wall = self.clock() - self.step_t0
        self.finished_steps.append(FinishedStep(
            max(0.0, wall - self.step_engine), self.step_iterations,
            self.step_local_iterations, self.step_calls))
        self.cycle_step_wall += wall
        self.step_calls = 0
        self.step_t0 = None

    # -- told by the restraints manager and the fragment executor --------------------
    def engine_call(self, seconds):
        self.last_call_end = now = self.clock()
        self.gradient_times.append(float(seconds))
        self.calls_done += 1
        if self.step_t0 is None:
            self.calls_outside_steps += 1     # the start model's energy
        else:
            self.step_calls += 1
            self.step_engine += float(seconds)
        if self.calls_done == 1:
            # the first call sets up the engines (every fragment from a fresh guess)
            print("  First QM gradient: %s (engines set up, no wavefunction to restart"
                  " from); the cost estimate follows after gradient %d"
                  % (minutes(seconds), FIRST_ESTIMATE_AFTER),
                  file=self.log)
            self._flush()
            self.last_print = now
        elif self.calls_done == FIRST_ESTIMATE_AFTER:
            earliest, total, every = self.estimate_range()
            self.estimates.append((now - self.t0, total))
            self.earliest_estimate, self.all_cycles_estimate = earliest, every
            print("  QM gradients so far: %s; %s per gradient assumed. Expected: %s;"
                  " estimate for the run: %s (%s from now)%s"
                  % (", ".join(minutes(t) for t in self.gradient_times),
                     minutes(self.seconds_per_gradient()),
                     self.describe_plan(), minutes(total), minutes(total - (now - self.t0)),
                     "; at least %s (it stops after cycle %d, as when no cycle beats the"
                     " best model so far, with no extra weight trial), at most %s (every"
                     " cycle and extra trial)"
                     % (minutes(earliest), self.planned.earliest_stop, minutes(every))
                     if earliest < every else ""),
                  file=self.log)
            self._flush()
            self.last_print = now
        elif self.calls_done > FIRST_ESTIMATE_AFTER and now - self.last_print >= self.interval:
            self.last_print = now
            total = self.estimate_range()[1]
            self.estimates.append((now - self.t0, total))
            print("  ... %s: %d QM gradients (%s each); run %s of ~%s, ~%s left"
                  % (self.step_label or "step", self.step_calls,
                     minutes(self.seconds_per_gradient()), minutes(now - self.t0),
                     minutes(total), minutes(max(0.0, total - (now - self.t0)))),
                  file=self.log)
            self._flush()

    def fragments_done(self, done, total):
        """Reported only while one gradient outlasts the interval (large models);
        otherwise the per-gradient lines say enough."""
        now = self.clock()
        since = max(self.last_print or self.t0, self.last_call_end or self.t0)
        if self.last_print is None or now - since < self.interval:
            return
        self.last_print = now
        print("  ... %s: QM gradient %d, %d of %d fragments done"
              % (self.step_label or "step", self.step_calls + 1, done, total), file=self.log)
        self._flush()

    # -- the estimate -----------------------------------------------------------------
    def seconds_per_gradient(self):
        """Mean of the last RECENT gradients from FIRST_ALONG_A_MINIMISATION
        on; before it, the mean of those measured."""
        times, warm_up = self.gradient_times, FIRST_ALONG_A_MINIMISATION - 1
        recent = times if len(times) <= warm_up else times[warm_up:][-RECENT:]
        return sum(recent) / len(recent) if recent else 0.0

    def _finished(self, local):
        """The finished steps on local QM models (local=True) or with a QM
        gradient at every iteration."""
        return [step for step in self.finished_steps if bool(step.local_iterations) == local]

    def calls_per_iteration(self):
        """QM gradients per iteration of the finished steps that took one at
        every iteration."""
        exact = self._finished(local=False)
        iterations = sum(step.iterations for step in exact)
        if iterations == 0:
            return self.calls_per_iteration_guess
        return sum(step.calls for step in exact) / float(iterations)

    def overhead_per_iteration(self, local_iterations=0):
        """Seconds per iteration outside the QM engine, from finished steps of
        the same kind: on local models each iteration adds GFN-FF calls
        (1va7: most of a local step's time), so they are measured apart."""
        same = self._finished(local=bool(local_iterations))
        iterations = sum(step.iterations for step in same)
        if iterations:
            return sum(step.overhead for step in same) / iterations
        return self.iteration_overhead_guess

    def overhead_per_cycle(self):
        if self.cycle_overheads:
            return sum(self.cycle_overheads) / len(self.cycle_overheads)
        return self.cycle_overhead_guess

    def _steps_to_come(self, which):
        """The planned steps still to come that the run takes when it stops
        at the earliest point, where expected, or after everything."""
        p = self.planned
        if which == "earliest":
            return p.steps_to(p.earliest_stop, 0)
        if which == "expected":
            return p.steps_to(p.expected_stop, p.expected_extra_trials)
        return p.steps

    def gradients_for(self, iterations, local_iterations=0):
        """QM gradients a minimisation of `iterations` is expected to take,
        with `local_iterations` steps per QM gradient (0: at every step)."""
        k = local_iterations
        if not k:
            return iterations * self.calls_per_iteration()
        # an expansion is one QM gradient, more where one was repeated; fewer
        # only for the weight trials, whose first expansions share one start
        # and find its gradient cached (1us0 helix: 1-2 QM gradients for 5
        # trials; the ratio taken as it came expected 11 gradients for a run
        # that took 23)
        local = self._finished(local=True)
        expansions = sum(step.expansions for step in local)
        per_expansion = max(1.0, sum(step.calls for step in local) / float(expansions)) \
            if expansions else 1.0
        return -(-iterations // k) * per_expansion

    def remaining_gradients(self, which="all"):
        current = max(0.0, self.gradients_for(self.step_iterations, self.step_local_iterations)
                      - self.step_calls) if self.step_t0 is not None else 0.0
        return current + sum(self.gradients_for(step.iterations, step.local_iterations)
                             for step in self._steps_to_come(which))

    def _time_left(self, which):
        now = self.clock()
        steps = self._steps_to_come(which)
        left = self.remaining_gradients(which) * self.seconds_per_gradient()
        per_cycle = self.overhead_per_cycle()
        left += sum(step.iterations * self.overhead_per_iteration(step.local_iterations)
                    for step in steps)
        step_wall = 0.0
        if self.step_t0 is not None:     # what the step under way has still to spend
            step_wall = now - self.step_t0
            spent = max(0.0, step_wall - self.step_engine)
            left += max(0.0, self.step_iterations * self.overhead_per_iteration(
                self.step_local_iterations) - spent)
        left += len({step.cycle for step in steps} - {self.cycle}) * per_cycle
        if self.cycle_t0 is not None:
            spent = now - self.cycle_t0 - self.cycle_step_wall - step_wall
            left += max(0.0, per_cycle - spent)
        return left

    def estimate_range(self):
        """(earliest, expected, every): the estimated wall time of the whole
        run, from the reporter's start, if it stops at the first point the stale
        rule allows without extra weight trials, where the plan expects it to,
        and after every planned cycle and trial."""
        elapsed = self.clock() - self.t0
        return tuple(elapsed + self._time_left(which)
                     for which in ("earliest", "expected", "all"))

    def describe_plan(self):
        iterations = [step.iterations for step in self._steps_to_come("expected")]
        if self.step_t0 is not None:
            iterations.append(self.step_iterations)
        n = int(round(self.remaining_gradients("expected"))) + self.calls_done
        return "%d minimisations (%d iterations), ~%d QM gradients" % (
            len(iterations), sum(iterations), n)

    def _flush(self):
        if hasattr(self.log, "flush"):
            self.log.flush()


def estimate_against_wall(result):
    """The first cost estimate of a finished run (its JSON result) against its
    wall time: 'estimate 2300 s (-4 %); range 1900 s (-21 %) .. 2700 s (+13 %)'."""
    wall = result["wall_seconds"]
    if not result.get("cost_estimates"):
        return "no estimate (no QM gradient along a minimisation)"

    def off(seconds):
        return "%.0f s (%+.0f %%)" % (seconds, 100.0 * (seconds - wall) / wall)
    text = "estimate " + off(result["cost_estimates"][0]["estimated_total_s"])
    earliest, every = (result.get("cost_estimate_earliest_stop_s"),
                       result.get("cost_estimate_all_cycles_s"))
    if earliest and every and earliest < every:
        text += "; range %s .. %s" % (off(earliest), off(every))
    return text

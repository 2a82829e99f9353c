"""What a QM run will cost, told while it runs.

A fragmented QM gradient of a real entry takes seconds to minutes (1va7,
3.9k atoms, GFN2, 126 fragments: ~10 s on 2 processes), and a refinement
needs a hundred or more of them.  The reporter is told the plan (the
minimisations still to come and their iteration limits), each QM gradient's
time (from the restraints manager) and each finished fragment (from the
fragment executor).  It prints:

* after the first QM gradient its time; after the third (the first along a
  minimisation) the time per gradient and an estimate for the run;
* at most every `interval` seconds while a step runs: gradients done, the
  time per gradient, and the estimated time left (fragments done too when
  one gradient outlasts the interval);
* after each step, nothing: the cycle table has the numbers; the estimate
  is only re-calibrated.

Time of a plan = (QM gradients planned) x (time per gradient) + (steps
planned) x (time per step outside the engine).  Gradients per iteration and
the time outside the engine are measured as the run goes; before the first
finished step they are taken as CALLS_PER_ITERATION and the
`overhead_per_step` the caller measured (the library stage's time per
minimisation, when there was one).  How many macro-cycles run is not known
in advance: the run stops once its best model is stale_cycles cycles old
(QM stage: 2), so it ends between the earliest such point and the last
cycle.  The estimate printed is the middle of that range, with both ends:
on five QM runs on an idle machine (docs/refinement.md: two of the cryo-EM
chain, 3kyi fast and full, 1va7 full) the middle was -7 to +29 % off the
wall time, the all-cycles figure +13 to +52 %.
"""

import sys
import time

#: QM gradients per L-BFGS iteration before any step is measured: mmtbx's
#: minimisers evaluate once per iteration, plus line-search retries (1va7,
#: GFN2: 72 gradients for 6 trials of 10 iterations, 27 for a 25-iteration cycle)
CALLS_PER_ITERATION = 1.1
RECENT = 5   # gradients averaged for the time per gradient
#: The first QM gradient is from scratch (engines set up, no wavefunction), the
#: second a restart at the same geometry; the third is the first after a step,
#: like the rest (3kyi, GFN2, 2 processes: 19.1 s, 8.8 s, then 13.6 s against
#: 13.8 s on average over the run's 124), so the estimate waits for it.
FIRST_ESTIMATE_AFTER = 3


def minutes(seconds):
    if seconds < 90:
        return "%.0f s" % seconds
    if seconds < 5400:
        return "%.0f min" % (seconds / 60.0)
    return "%.1f h" % (seconds / 3600.0)


class CostReporter:

    def __init__(self, log=sys.stdout, interval=60.0, overhead_per_step=0.0, clock=None,
                 t0=None):
        self.log = log
        self.interval = float(interval)
        self.clock = clock or time.perf_counter
        self.t0 = self.clock() if t0 is None else t0   # the run's start
        self.overhead_guess = float(overhead_per_step)
        self.plan_steps = []          # [(label, iterations, macro-cycle)] still to come
        self.earliest_stop = None     # the first cycle after which the run may stop
        self.step_label = None
        self.step_iterations = 0
        self.step_t0 = None
        self.step_calls = 0
        self.step_engine = 0.0
        self.gradient_times = []
        self.calls_done = 0
        self.calls_outside_steps = 0
        self.finished_step_calls = 0
        self.iterations_done = 0      # iteration limits of finished steps
        self.overheads = []           # seconds outside the engine per finished step
        self.last_print = None
        self.last_call_end = None
        self.estimates = []           # (elapsed, estimated total) as printed
        self.earliest_estimate = None  # the first estimate's range: earliest stop ...
        self.all_cycles_estimate = None  # ... and every planned cycle

    # -- told by the driver --------------------------------------------------------
    def plan(self, steps, earliest_stop=None):
        """The minimisations still to come, as (label, iteration limit, cycle);
        earliest_stop: the first cycle after which the run may stop (None: it
        runs every cycle), for the estimate's lower figure."""
        self.plan_steps = [tuple(step) for step in steps]
        self.earliest_stop = earliest_stop

    def begin_step(self, label, iterations):
        self.step_label = label
        self.step_iterations = int(iterations)
        self.step_t0 = self.clock()
        self.step_calls = 0
        self.step_engine = 0.0
        self.last_call_end = self.step_t0
        labels = [step[0] for step in self.plan_steps]
        if label in labels:       # unplanned steps (extra weight trials) take none
            del self.plan_steps[labels.index(label)]

    def drop_steps(self, prefix):
        """Planned steps that will not run (a weight search that ended early)."""
        self.plan_steps = [step for step in self.plan_steps if not step[0].startswith(prefix)]

    def end_step(self):
        if self.step_t0 is None:
            return
        wall = self.clock() - self.step_t0
        self.overheads.append(max(0.0, wall - self.step_engine))
        self.iterations_done += self.step_iterations
        self.finished_step_calls += self.step_calls
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
                  " from); the cost estimate follows the first gradient along a"
                  " minimisation" % minutes(seconds),
                  file=self.log)
            self._flush()
            self.last_print = now
        elif self.calls_done == FIRST_ESTIMATE_AFTER:
            earliest, every = self.estimate_range()
            total = self.expected_total(earliest, every)
            self.estimates.append((now - self.t0, total))
            self.earliest_estimate, self.all_cycles_estimate = earliest, every
            print("  QM gradients so far: %s; %s per gradient assumed. Planned: %s;"
                  " estimate for the run: %s (%s from now)%s"
                  % (", ".join(minutes(t) for t in self.gradient_times),
                     minutes(self.seconds_per_gradient()),
                     self.describe_plan(), minutes(total), minutes(total - (now - self.t0)),
                     ": between %s if it stops after cycle %d, as when no cycle beats the"
                     " best model so far, and %s if it runs every cycle"
                     % (minutes(earliest), self.earliest_stop, minutes(every))
                     if earliest < every else ""),
                  file=self.log)
            self._flush()
            self.last_print = now
        elif self.calls_done > FIRST_ESTIMATE_AFTER and now - self.last_print >= self.interval:
            self.last_print = now
            total = self.expected_total(*self.estimate_range())
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
        """Mean of the last RECENT gradients from FIRST_ESTIMATE_AFTER on;
        before it, the mean of those measured."""
        times, warm_up = self.gradient_times, FIRST_ESTIMATE_AFTER - 1
        recent = times if len(times) <= warm_up else times[warm_up:][-RECENT:]
        return sum(recent) / len(recent) if recent else 0.0

    def calls_per_iteration(self):
        if self.iterations_done == 0:
            return CALLS_PER_ITERATION
        return self.finished_step_calls / float(self.iterations_done)

    def overhead_per_step(self):
        if self.overheads:
            return sum(self.overheads) / len(self.overheads)
        return self.overhead_guess

    def _steps_to_come(self, earliest):
        """Planned steps still to come; with `earliest`, only those up to the
        earliest stop."""
        if not earliest or self.earliest_stop is None:
            return self.plan_steps
        return [step for step in self.plan_steps if step[2] <= self.earliest_stop]

    def remaining_gradients(self, earliest=False):
        per = self.calls_per_iteration()
        current = max(0.0, self.step_iterations * per - self.step_calls) \
            if self.step_t0 is not None else 0.0
        return current + sum(n * per for _, n, _ in self._steps_to_come(earliest))

    def _time_left(self, earliest):
        left = self.remaining_gradients(earliest) * self.seconds_per_gradient()
        steps_left = len(self._steps_to_come(earliest)) + (1 if self.step_t0 is not None else 0)
        return left + steps_left * self.overhead_per_step()

    def estimate_range(self):
        """(earliest stop, every planned cycle): the estimated wall time of the
        whole run, from the reporter's start, if it stops at the first point
        the stale rule allows, and if it runs every planned cycle."""
        elapsed = self.clock() - self.t0
        return elapsed + self._time_left(True), elapsed + self._time_left(False)

    @staticmethod
    def expected_total(earliest, every):
        """The estimate printed: the middle of the range (see the module doc)."""
        return 0.5 * (earliest + every)

    def describe_plan(self):
        iterations = [n for _, n, _ in self.plan_steps]
        if self.step_t0 is not None:
            iterations.append(self.step_iterations)
        n = int(round(self.remaining_gradients())) + self.calls_done
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

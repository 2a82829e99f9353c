"""Choosing the weight between data and restraints.

    T = w_data * E_data + E_restraints,   w_data = scale * |g_restraints| / |g_data|

The gradient-norm ratio (as mmtbx.refinement.weights does, with data
gradients of outlying atoms dropped) puts both terms on the same footing;
`scale` is what is chosen.  With `weight=auto` a few trial scales are refined
from the same start and one is picked by phenix.refine's criteria
(mmtbx/refinement/weights_params.py): geometry within resolution-dependent
limits, then R-free - R-work within limit, then the lowest R-free.
"""

import math
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

import iotbx.phil

from qr_phenix.refinement.statistics import WithGap

master_phil_str = """
weight = auto
  .type = str
  .help = "Data-term weight scale: auto (choose from trials) or a number \
           multiplying the gradient-norm ratio |g_restraints|/|g_data|"
  .short_caption = Weight
weight_trials = 0.125 0.25 0.5 1 2
  .type = floats
  .help = "Scales tried in the first macro-cycle when weight=auto; when none \
           meets the limits, smaller scales (stronger restraints) are tried"
weight_search = *auto first every
  .type = choice
  .help = "weight=auto: trials in the first cycle only (then the study's x2 \
           rules), or every cycle around the current weight (scale/2, scale, \
           2 scale). auto: every for library restraints, first for QM"
anneal = *auto on off
  .type = choice
  .help = "Weight annealing for starts far from the data: refine with the \
           strongest-data trial weight, then halve it each cycle until the \
           geometry is within limits. auto: when a trial's R-free is 0.02 \
           below the chosen weight's"
bond_rmsd_max = None
  .type = float
  .help = "Non-H bond rmsd (A, vs library) allowed; None = by resolution"
angle_rmsd_max = None
  .type = float
  .help = "Non-H angle rmsd (degrees, vs library) allowed; None = by resolution"
r_free_r_work_gap_max = None
  .type = float
  .help = "R-free - R-work allowed (fraction, e.g. 0.05); None = by resolution"
gradient_outlier_cutoff = 3
  .type = float
  .help = "Atoms with |g_data| above this times the mean are left out of the ratio"
"""



def _phenix_table():
    """phenix.refine's criteria by resolution, read from mmtbx (percent -> fraction)."""
    from mmtbx.refinement import weights_params
    table = iotbx.phil.parse(weights_params.tw_customizations_str).extract()
    return [(c.d_min, c.d_max, c.bonds_rmsd, c.angles_rmsd, c.r_free_minus_r_work / 100)
            for c in table.weight_selection_criteria]


# QM minima are not library minima: even a perfect model minimised with a
# quantum energy deviates from the Engh & Huber ideals.  The allowance added
# to the library limits is that intrinsic deviation, measured here as the
# non-H bond/angle rmsd vs the library after geometry-only minimisation of
# the 1us0 reference helix (docs/benchmark_1us0.md): a QM-restrained model at
# the library limit plus this offset is not over-fitted.  Engines not
# measured get the GFN2-like default.
QM_ALLOWANCE = {           # engine: (bond A, angle deg)
    "gfn2": (0.013, 2.0),
    "xtb": (0.013, 2.0),
    "pm7": (0.023, 1.5),
}
QM_DEFAULT_ALLOWANCE = (0.010, 1.0)


@dataclass
class Limits:
    bond_rmsd: float
    angle_rmsd: float
    gap: float
    n_free: Optional[int] = None     # free-R test reflections
    max_clashscore: Optional[float] = None   # the start's clashscore, once measured
    gap_fixed: bool = False          # the user set the gap: no noise allowance

    def r_free_noise(self, r_free):
        """With n test reflections R-free scatters by about R-free / sqrt(n)."""
        if not self.n_free or r_free is None:
            return 0.0
        return r_free / math.sqrt(self.n_free)

    def clash_ok(self, clashscore):
        return self.max_clashscore is None or clashscore is None or \
            clashscore <= self.max_clashscore

    def gap_allowed(self, r_free):
        """The gap limit, or twice the noise of R-free when that is larger: a
        gap below it is no evidence of over-fitting (21 free reflections of
        the 1us0 helix data: 0.04-0.09)."""
        if self.gap_fixed:
            return self.gap
        return max(self.gap, 2.0 * self.r_free_noise(r_free))

    def gap_ok(self, r_work, r_free):
        if r_work is None or r_free is None:
            return True
        return r_free - r_work <= self.gap_allowed(r_free)


def limits_for(d_min, params, quantum, engine=None, n_free=None):
    table = _phenix_table()
    row = table[-1]
    for r in table:
        if d_min is not None and r[0] <= d_min < r[1]:
            row = r
    bond, angle, gap = row[2:]
    if quantum:
        extra_bond, extra_angle = QM_ALLOWANCE.get(engine, QM_DEFAULT_ALLOWANCE)
        bond += extra_bond
        angle += extra_angle
    return Limits(
        bond_rmsd=params.bond_rmsd_max if params.bond_rmsd_max is not None else bond,
        angle_rmsd=params.angle_rmsd_max if params.angle_rmsd_max is not None else angle,
        gap=params.r_free_r_work_gap_max if params.r_free_r_work_gap_max is not None else gap,
        n_free=n_free, gap_fixed=params.r_free_r_work_gap_max is not None)


def gradient_ratio(g_restraints, g_data, outlier_cutoff=3.0):
    """|g_restraints| / |g_data| over atoms, data outliers removed."""
    gr = np.linalg.norm(np.asarray(g_restraints).reshape(-1, 3), axis=1)
    gd = np.linalg.norm(np.asarray(g_data).reshape(-1, 3), axis=1)
    keep = gd < outlier_cutoff * gd.mean() if gd.size and gd.mean() > 0 else slice(None)
    num, den = np.linalg.norm(gr), np.linalg.norm(gd[keep])
    if not np.isfinite(num) or not np.isfinite(den):
        from libtbx.utils import Sorry
        raise Sorry("Non-finite gradients while choosing the weight; the model or the"
                    " restraints are broken (check for clashes and missing atoms).")
    return num / den if den > 0 else 1.0


def parse_weight(value):
    """'auto' -> None, a number -> float (Sorry otherwise)."""
    if value is None or str(value).strip().lower() in ("auto", "none"):
        return None
    try:
        w = float(value)
    except ValueError:
        from libtbx.utils import Sorry
        raise Sorry("refinement.weight must be 'auto' or a positive number, not %r" % value)
    if w <= 0:
        from libtbx.utils import Sorry
        raise Sorry("refinement.weight must be positive (got %g)" % w)
    return w


@dataclass
class Trial(WithGap):
    scale: float
    r_work: Optional[float]
    r_free: Optional[float]
    bond_rmsd: float
    angle_rmsd: float
    map_cc: Optional[float] = None
    clashscore: Optional[float] = None
    broken_bonds: int = 0     # library bonds a QM energy broke or formed
    verdict: str = ""


def meets_limits(trial, limits, score="r_free"):
    """score "r_free": geometry and gap; "map_cc" or "geometry": geometry only."""
    geometry = trial.bond_rmsd <= limits.bond_rmsd and trial.angle_rmsd <= limits.angle_rmsd
    if score == "map_cc":
        return geometry and limits.clash_ok(trial.clashscore)
    if score != "r_free":
        return geometry
    return geometry and trial.gap is not None and limits.gap_ok(trial.r_work, trial.r_free)


def choose(trials: List[Trial], limits: Limits, score="r_free"):
    """Pick a trial; every trial gets a verdict explaining the choice.

    score: "r_free" (lower is better) or "map_cc" (higher is better).
    """
    pool = [t for t in trials
            if t.bond_rmsd <= limits.bond_rmsd and t.angle_rmsd <= limits.angle_rmsd]
    for t in trials:
        if t not in pool:
            t.verdict = "geometry over limits (%.3f A / %.2f deg)" % (
                limits.bond_rmsd, limits.angle_rmsd)
    if not pool:
        best = min(trials, key=lambda t: (t.bond_rmsd / limits.bond_rmsd
                                          + t.angle_rmsd / limits.angle_rmsd))
        best.verdict = "chosen: no trial met the geometry limits; best geometry"
        return best
    if score == "map_cc":
        clash_ok = [t for t in pool if limits.clash_ok(t.clashscore)]
        for t in pool:
            t.verdict = "ok" if t in clash_ok else "clashscore %.1f over the start's %.1f" % (
                t.clashscore, limits.max_clashscore)
        if not clash_ok:
            best = min(pool, key=lambda t: t.clashscore)
            best.verdict = "chosen: no trial kept the start's clashscore; fewest clashes"
            return best
        best = max(clash_ok, key=lambda t: t.map_cc)
        best.verdict = "chosen: highest map CC with geometry and clashscore within limits"
        return best
    gap_ok = [t for t in pool if t.gap is not None and limits.gap_ok(t.r_work, t.r_free)]
    for t in pool:
        if t not in gap_ok:
            t.verdict = "R-free - R-work over %.3f" % limits.gap_allowed(t.r_free)
    if gap_ok:
        pool = gap_ok
    best = min(pool, key=lambda t: t.r_free)
    for t in pool:
        t.verdict = t.verdict or "ok"
    best.verdict = "chosen: lowest R-free with geometry within limits%s" % (
        "" if gap_ok else " (no trial met the gap limit)")
    return best

"""Which model a refinement hands back: never a worse one than it was given.

Every macro-cycle ends with a candidate; the start model is a candidate too.
A candidate is acceptable when its non-H geometry is within the limits (or
no worse than the start's, for a start already outside them), R-free - R-work
is within the gap limit, and, where measured, its clashscore is no worse than
the start's.  Among acceptable candidates the best score wins (lowest R-free,
or highest map CC).  A refined model whose R-free is above the start's by
more than R_FREE_TOLERANCE is never handed back: the start is returned then,
and the log says so.
"""

from dataclasses import dataclass
from typing import List, Optional, Tuple

R_FREE_TOLERANCE = 0.002


@dataclass
class Verdict:
    index: int            # 0 = start, k = cycle k
    acceptable: bool
    reasons: List[str]


def _problems(c, start, limits, score):
    reasons = []
    bond_limit = max(limits.bond_rmsd, start.bond_rmsd)
    angle_limit = max(limits.angle_rmsd, start.angle_rmsd)
    if c.bond_rmsd > bond_limit:
        reasons.append("bonds %.4f > %.4f" % (c.bond_rmsd, bond_limit))
    if c.angle_rmsd > angle_limit:
        reasons.append("angles %.2f > %.2f" % (c.angle_rmsd, angle_limit))
    if score == "r_free" and c.gap is not None:
        gap_limit = max(limits.gap, start.gap if start.gap is not None else 0.0)
        if c.gap > gap_limit:
            reasons.append("R-free - R-work %.3f > %.3f" % (c.gap, gap_limit))
    if c.clashscore is not None and start.clashscore is not None \
            and c.clashscore > start.clashscore:
        reasons.append("clashscore %.1f > start %.1f" % (c.clashscore, start.clashscore))
    return reasons


def choose(start, cycles, limits, score="r_free") -> Tuple[int, str]:
    """(index into [start] + cycles, one-line reason)."""
    candidates = [start] + list(cycles)
    if not cycles:
        return 0, "no macro-cycle ran"
    if score is None:          # geometry only: the last model
        return len(cycles), "last cycle"
    verdicts = [Verdict(i, not r, r) for i, r in
                ((i, _problems(c, start, limits, score)) for i, c in enumerate(candidates))]
    pool = [v.index for v in verdicts if v.acceptable]
    note = ""
    if not pool:
        pool = list(range(len(candidates)))
        note = " (no model met every limit: %s)" % "; ".join(verdicts[-1].reasons)

    def key(i):
        c = candidates[i]
        return c.r_free if score == "r_free" else -c.map_cc
    best = min(pool, key=key)
    chosen = candidates[best]
    if score == "r_free" and best != 0 and start.r_free is not None and \
            chosen.r_free > start.r_free + R_FREE_TOLERANCE:
        return 0, ("the start model: no refined model had R-free within %.3f of the"
                   " start's %.4f (best %.4f, cycle %d)%s" % (
                       R_FREE_TOLERANCE, start.r_free, chosen.r_free, best, note))
    if score == "map_cc" and best != 0 and chosen.map_cc < start.map_cc:
        return 0, "the start model: no refined model raised map CC%s" % note
    what = "the start model" if best == 0 else "cycle %d" % best
    how = "lowest R-free" if score == "r_free" else "highest map CC"
    return best, "%s: %s among models within the limits%s" % (what, how, note)

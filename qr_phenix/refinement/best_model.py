"""Which model a refinement hands back: never a worse one than it was given.

Every macro-cycle ends with a candidate model.  A candidate is acceptable
when its non-H geometry is within the limits (or no worse than the start's,
for a start already outside them), no covalent bond broke (QM), R-free -
R-work is within the gap limit, and (maps, where measured) its clashscore
is no worse than the start's.  Among acceptable candidates the best score
wins (lowest R-free, or highest map CC; of scores within the tolerance, the
fewest clashes, then the latest cycle).  When none is acceptable the gap
limit is relaxed, never geometry: without a candidate of acceptable
geometry the start is handed back.  A refined model whose R-free is above
the start's by more than R_FREE_TOLERANCE (map CC below it by more than
MAP_CC_TOLERANCE; differences that small are noise), or above a given
ceiling (the QM stage's, whose start is the library model), is never handed
back either.  The log says which and why.
"""

from typing import Tuple

R_FREE_TOLERANCE = 0.002
MAP_CC_TOLERANCE = 0.002


def _problems(c, start, limits, score):
    reasons = []
    if c.broken_bonds:
        reasons.append("%d covalent bonds broken or formed" % c.broken_bonds)
    bond_limit = max(limits.bond_rmsd, start.bond_rmsd)
    angle_limit = max(limits.angle_rmsd, start.angle_rmsd)
    if c.bond_rmsd > bond_limit:
        reasons.append("bonds %.4f > %.4f" % (c.bond_rmsd, bond_limit))
    if c.angle_rmsd > angle_limit:
        reasons.append("angles %.2f > %.2f" % (c.angle_rmsd, angle_limit))
    if score == "r_free" and c.gap is not None:
        gap_limit = max(limits.gap_allowed(c.r_free),
                        start.gap if start.gap is not None else 0.0)
        if c.gap > gap_limit:
            reasons.append("R-free - R-work %.3f > %.3f" % (c.gap, gap_limit))
    # maps: a better fit bought with clashes is not better (X-ray data have
    # R-free to judge by; there the clashscore is reported, not a criterion)
    if score == "map_cc" and c.clashscore is not None and start.clashscore is not None \
            and c.clashscore > start.clashscore:
        reasons.append("clashscore %.1f > start %.1f" % (c.clashscore, start.clashscore))
    return reasons


def _acceptable(candidates, limits, score):
    """(indices of the refined candidates that may be handed back, a note when
    the gap limit had to be relaxed for any to be, every candidate's problems)."""
    start = candidates[0]
    problems = {i: _problems(c, start, limits, score) for i, c in enumerate(candidates)}
    refined = range(1, len(candidates))
    pool = [i for i in refined if not problems[i]]
    note = ""
    if not pool:
        # the gap is the criterion least worth an R-free: relax it first
        pool = [i for i in refined if all(p.startswith("R-free - R-work")
                                          for p in problems[i])]
        note = " (none met the R-free - R-work limit)"
    return pool, note, problems


def latest_r_free_record(start, cycles, limits) -> int:
    """The last cycle whose model may be handed back and has a lower R-free
    than every such model before it (0: none).  A record within
    R_FREE_TOLERANCE of the model chosen is no better to hand back, but
    R-free is cross-validated: still falling, refinement is not done (1va7,
    GFN2 after the library stage: cycle 3 0.2624 vs cycle 1 0.2627 with
    fewer clashes; the run stopped there, and with the record counted it
    went on to 0.2569 in cycle 5).  Map CC has no free set to tell such a
    gain from crowding atoms into density, so maps have no records."""
    candidates = [start] + list(cycles)
    pool, _, _ = _acceptable(candidates, limits, "r_free")
    return min(pool, key=lambda i: (candidates[i].r_free, i)) if pool else 0


def choose(start, cycles, limits, score="r_free", r_free_ceiling=None) -> Tuple[int, str]:
    """(index into [start] + cycles, one-line reason).  r_free_ceiling: the
    highest R-free a refined model may have (default: the start's plus
    R_FREE_TOLERANCE)."""
    candidates = [start] + list(cycles)
    if not cycles:
        return 0, "no macro-cycle ran"
    if score is None:          # geometry only: the last model
        return len(cycles), "last cycle"
    pool, note, problems = _acceptable(candidates, limits, score)
    if not pool:
        # a fit bought with distorted geometry (or, for maps, new clashes) is
        # not an improvement to hand back
        return 0, ("the start model: no refined model kept geometry%s within limits"
                   " (last cycle: %s)" % (" and clashscore" if score == "map_cc" else "",
                                          "; ".join(problems[len(cycles)])))

    def key(i):
        c = candidates[i]
        return c.r_free if score == "r_free" else -c.map_cc
    # differences below the tolerance are noise: of such fits, validation
    # tells them apart (1va7, GFN2: cycle 5 R-free 0.2509 with clashscore 4.3,
    # cycle 4 0.2520 with 4.1), then the latest is the most converged model
    # (QM energy lowest, geometry most relaxed)
    tolerance = R_FREE_TOLERANCE if score == "r_free" else MAP_CC_TOLERANCE
    top = min(key(i) for i in pool)
    tied = [i for i in pool if key(i) <= top + tolerance]
    measured = all(candidates[i].clashscore is not None for i in tied)
    best = min(tied, key=lambda i: (candidates[i].clashscore if measured else 0.0, -i))
    chosen = candidates[best]
    if score == "r_free":
        if r_free_ceiling is not None:
            bound = "below %.4f" % r_free_ceiling
        elif start.r_free is not None:
            r_free_ceiling = start.r_free + R_FREE_TOLERANCE
            bound = "within %.3f of the start's %.4f" % (R_FREE_TOLERANCE, start.r_free)
        if r_free_ceiling is not None and chosen.r_free > r_free_ceiling:
            return 0, ("the start model: no refined model had R-free %s (best %.4f, cycle %d)%s"
                       % (bound, chosen.r_free, best, note))
    if score == "map_cc" and start.map_cc is not None and \
            chosen.map_cc < start.map_cc - MAP_CC_TOLERANCE:
        return 0, ("the start model: no refined model had map CC within %.3f of the"
                   " start's %.4f (best %.4f, cycle %d)%s" % (
                       MAP_CC_TOLERANCE, start.map_cc, chosen.map_cc, best, note))
    how = "lowest R-free" if score == "r_free" else "highest map CC"
    return best, ("cycle %d: of the refined models within the limits and within %.3f of"
                  " the %s, the %s%s" % (best, tolerance, how,
                                         "fewest clashes, then the latest" if measured
                                         else "latest", note))

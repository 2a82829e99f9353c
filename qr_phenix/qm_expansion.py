"""The QM energy about its last QM point, with a force field's curvature.

A QM gradient costs 0.1-0.3 s for a 94-atom helix and 10-50 s for a
fragmented 4k-atom entry, and L-BFGS asks for one per step or more.  Between
two QM gradients the minimiser can instead take several steps on a local
model of the QM energy about the last QM point x0 (d = x - x0):

    E(x) = E_QM(x0) + g_QM(x0).d + k [E_FF(x) - E_FF(x0) - g_FF(x0).d]

The first two terms are the QM energy to first order; the bracket is the
force field less its own first-order part, i.e. its curvature and beyond,
scaled by k (CURVATURE_SCALE: 1 but for engines measured to be stiffer).
E and its gradient equal QM's at x0, so where the minimisation on E stops
and the next QM gradient is taken, a point where the target on E is
stationary is stationary for the target on QM: the end point is QM's; the
force field only shapes the steps toward it.

The force field must have QM's curvature in every direction the minimiser
takes.  GFN-FF has (xtb program): the ratio of GFN2's to GFN-FF's curvature
along random moves, moves along the GFN2 gradient, of H atoms only, of
heavy atoms only and of a block of 30 atoms is 0.94-1.01 on the 1us0 helix
and the AVKVA peptide (1.35 for the helix block).  The library's curvature
has the wrong shape: 0.044-0.054 along random moves but 0.1-0.35 along a
minimiser's steps (torsions and contacts, which the library barely
restrains), and a refinement on it handed back R-free 0.087-0.103 where the
exact minimisation reached 0.064.

The restraints manager builds the force field for what its QM term
computes (QMRestraintsManager.expand_at): the same atoms with the same
charge and implicit solvent, or the same fragments on the same workers.
On the helix at a fixed weight, 10 steps per QM gradient refined with 28
QM gradients to R-free 0.0595 where one gradient per step took 298 to
reach 0.0611 (docs/refinement.md).
"""

from dataclasses import dataclass

import numpy as np

#: Where the force field has no curvature for an atom (no bond to it in its
#: topology) the local model is linear there and a minimiser would run off
#: along the QM force.  On prepared 1va7 (GFN-FF on fragments) a run without
#: this wall stopped in its third QM cycle: atoms had moved so far that the
#: fragments, rebuilt, bonded across a new contact and one had an odd number
#: of electrons.  A harmonic wall on each atom's move
#: beyond TRUST_RADIUS from the expansion point stops that; it is zero at
#: the point itself, so the end point is still QM's.
TRUST_RADIUS = 0.3                # A
TRUST_FORCE_CONSTANT = 1000.0     # kcal/mol/A^2

#: The force field's curvature term is scaled for QM engines stiffer than
#: GFN-FF.  PM7 wants peptide C-N bonds ~0.04 A longer than the library, and
#: 10 steps on the unscaled local model from a 1.5 A helix start overshot
#: them to +0.06 A (non-H bond rmsd 0.032 A against 0.021 A for 10 exact PM7
#: steps; x1.5: 0.022 A).  The ratio of PM7's to GFN-FF's change of gradient
#: along such a descent was 1.38-1.45 (GFN2's 1.18-1.21, where x1 already
#: matched exact GFN2: 0.013 vs 0.012 A).  In the 1us0 study's PM7 jobs the
#: unscaled model put every weight trial over the bond limit; at x1.4, 6 of
#: 12 starts reached R-free <= 0.15 against 1 of 12 (docs/benchmark_1us0.md).
CURVATURE_SCALE = {"pm7": 1.4}
#: engines whose curvature GFN-FF's was measured to match unscaled (GFN2/GFN-FF
#: 0.94-1.01 along random, gradient, H-only and heavy-only moves; xtb is the
#: xtb program's GFN2); refinement warns for the others
MEASURED_ENGINES = ("gfn2", "xtb", "gfnff")


@dataclass
class ExpansionPoint:
    sites: np.ndarray
    energy: float
    gradient: np.ndarray
    shape_energy: float
    shape_gradient: np.ndarray


class LocalQMModel:
    """shape: an evaluator (`energy_and_gradient(sites) -> (kcal/mol, (n, 3)
    kcal/mol/A)`) of the force field for the same atoms as the QM term."""

    def __init__(self, shape, curvature_scale=1.0):
        self.shape = shape
        self.curvature_scale = float(curvature_scale)
        self.point = None

    def expand_at(self, sites, energy, gradient):
        """Make (sites, QM energy, QM gradient) the expansion point."""
        sites = np.array(sites, dtype=float).reshape(-1, 3)
        shape_energy, shape_gradient = self.shape.energy_and_gradient(sites)
        self.point = ExpansionPoint(sites, float(energy), np.array(gradient, dtype=float),
                                    float(shape_energy), np.array(shape_gradient, dtype=float))

    def energy_and_gradient(self, sites):
        p = self.point
        sites = np.array(sites, dtype=float).reshape(-1, 3)
        d = sites - p.sites
        shape_energy, shape_gradient = self.shape.energy_and_gradient(sites)
        k = self.curvature_scale
        energy = (p.energy + float(np.vdot(p.gradient, d))
                  + k * (shape_energy - p.shape_energy - float(np.vdot(p.shape_gradient, d))))
        gradient = p.gradient + k * (shape_gradient - p.shape_gradient)
        wall, wall_gradient = trust_wall(d)
        return energy + wall, gradient + wall_gradient


def trust_wall(d):
    """TRUST_FORCE_CONSTANT (|d_i| - TRUST_RADIUS)^2 summed over atoms moved
    further than TRUST_RADIUS, and its gradient."""
    length = np.linalg.norm(d, axis=1)
    over = np.maximum(length - TRUST_RADIUS, 0.0)
    gradient = np.zeros_like(d)
    moved = over > 0
    gradient[moved] = (2 * TRUST_FORCE_CONSTANT * over[moved] / length[moved])[:, None] * d[moved]
    return TRUST_FORCE_CONSTANT * float(np.sum(over ** 2)), gradient

"""A cheap analytic engine for plumbing tests only (not chemistry).

Energy (eV) = sum over covalent bonds of a Morse term
              + a soft repulsion between atoms that are neither bonded nor
                share a bonded neighbour.
Bonds are found once per atom list from covalent radii (d < 1.25 (r_i + r_j))
and then kept fixed, so the energy is smooth and the forces are its exact
analytic derivative.  Electron counts are still checked like any engine.
"""

import numpy as np
from ase.data import covalent_radii
from scipy.spatial import cKDTree

from qr_phenix.engines._common import EngineCalculator

#: Morse well depth (eV) and width (1/A)
MORSE_D = 4.0
MORSE_A = 2.0
#: bond detection: d < BOND_SCALE * (r_cov_i + r_cov_j)
BOND_SCALE = 1.25
#: soft repulsion EPS * (1 - r / R_CUT)^3 for r < R_CUT (eV, A)
REPULSION_EPS = 1.0
REPULSION_CUT = 2.5


def find_bonds(numbers, positions):
    radii = covalent_radii[numbers]
    tree = cKDTree(positions)
    pairs = np.array(sorted(tree.query_pairs(BOND_SCALE * 2 * radii.max())), dtype=int)
    if len(pairs) == 0:
        return np.zeros((0, 2), dtype=int), np.zeros(0)
    d = np.linalg.norm(positions[pairs[:, 0]] - positions[pairs[:, 1]], axis=1)
    r0 = radii[pairs[:, 0]] + radii[pairs[:, 1]]
    keep = d < BOND_SCALE * r0
    return pairs[keep], r0[keep]


def excluded_pairs(n, bonds):
    """1-2 and 1-3 pairs, as a set of (i, j) with i < j."""
    neighbours = [set() for _ in range(n)]
    for i, j in bonds:
        neighbours[i].add(j)
        neighbours[j].add(i)
    out = {(min(i, j), max(i, j)) for i, j in bonds}
    for k in range(n):
        nb = sorted(neighbours[k])
        out.update((a, b) for x, a in enumerate(nb) for b in nb[x + 1:])
    return out


def energy_forces(positions, bonds, r0, excluded):
    forces = np.zeros_like(positions)
    energy = 0.0
    if len(bonds):
        v = positions[bonds[:, 0]] - positions[bonds[:, 1]]
        d = np.linalg.norm(v, axis=1)
        x = np.exp(-MORSE_A * (d - r0))
        energy += np.sum(MORSE_D * (1 - x) ** 2)
        de_dd = 2 * MORSE_D * (1 - x) * MORSE_A * x
        f = -(de_dd / d)[:, None] * v
        np.add.at(forces, bonds[:, 0], f)
        np.add.at(forces, bonds[:, 1], -f)
    pairs = [p for p in cKDTree(positions).query_pairs(REPULSION_CUT) if p not in excluded]
    if pairs:
        pairs = np.array(pairs, dtype=int)
        v = positions[pairs[:, 0]] - positions[pairs[:, 1]]
        d = np.maximum(np.linalg.norm(v, axis=1), 1e-12)
        s = 1 - d / REPULSION_CUT
        energy += np.sum(REPULSION_EPS * s ** 3)
        de_dd = -3 * REPULSION_EPS * s ** 2 / REPULSION_CUT
        f = -(de_dd / d)[:, None] * v
        np.add.at(forces, pairs[:, 0], f)
        np.add.at(forces, pairs[:, 1], -f)
    return energy, forces


class TestCalculator(EngineCalculator):
    """Analytic bonded Morse + soft repulsion (eV, eV/A): plumbing only."""

    __test__ = False  # not a pytest class
    engine_name = "test"

    def __init__(self, settings=None, **kwargs):
        super().__init__(settings, **kwargs)
        self._topology = None

    def _reset_for_new_atoms(self):
        self._topology = None

    def _compute(self, numbers, positions):
        if self._topology is None:
            bonds, r0 = find_bonds(numbers, positions)
            self._topology = bonds, r0, excluded_pairs(len(numbers), bonds)
        return energy_forces(positions, *self._topology)


def factory(settings):
    return TestCalculator(settings)

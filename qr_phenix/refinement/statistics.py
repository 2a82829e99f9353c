"""Numbers reported per cycle: R factors, map CC, and geometry of non-H atoms.

Geometry is always measured against the monomer library (Engh & Huber) on
non-hydrogen atoms, whatever the restraints of the refinement: X-H lengths in
the library are X-ray (electron-cloud) distances, so all-atom rmsds of a
correctly protonated model are dominated by them (0.07 A for the reference
helix) and would hide what the heavy atoms do.
"""

from dataclasses import dataclass, asdict
from typing import Optional

import numpy as np
from scitbx.array_family import flex

from qr_phenix.monomer_library import library_bonds, library_manager


class HeavyAtomGeometry:
    """Non-H bond/angle rmsd against the library; the selected manager is built
    once (topology does not change during refinement)."""

    def __init__(self, model):
        self.heavy = ~model.get_hd_selection()
        self.manager = library_manager(model).select(self.heavy)

    def __call__(self, sites_cart):
        es = self.manager.energies_sites(sites_cart=sites_cart.select(self.heavy))
        bonds = es.bond_deviations()
        angles = es.angle_deviations()
        return bonds[2], angles[2]


class WithGap:
    """R-free - R-work derived from a dataclass's r_work/r_free, kept out of
    the stored fields and added to the JSON form."""

    @property
    def gap(self):
        if self.r_work is None or self.r_free is None:
            return None
        return self.r_free - self.r_work

    def as_dict(self):
        d = asdict(self)
        d["gap"] = self.gap
        return d

    @classmethod
    def from_dict(cls, d):
        return cls(**{k: v for k, v in d.items() if k != "gap"})


@dataclass
class CycleStats(WithGap):
    cycle: int
    r_work: Optional[float] = None
    r_free: Optional[float] = None
    map_cc: Optional[float] = None
    bond_rmsd: float = 0.0
    angle_rmsd: float = 0.0
    restraint_energy: Optional[float] = None   # kcal/mol (QM: relative to start)
    weight: Optional[float] = None             # data-term weight scale
    adp_weight: Optional[float] = None         # ADP data-weight scale (X-ray with B)
    mean_b: Optional[float] = None             # A^2, all atoms
    clashscore: Optional[float] = None         # probe2, hydrogens kept
    hbonds: Optional[dict] = None              # H-bond geometry summary
    broken_bonds: int = 0                      # library bonds off by > 0.4 A (QM)
    engine_calls: int = 0
    engine_seconds: float = 0.0
    seconds: float = 0.0
    note: str = ""

    def add_note(self, text):
        self.note = "%s; %s" % (self.note, text) if self.note else text


HEADER = ("cycle  R-work  R-free    gap   bonds  angles  clash   map CC  E_restr(kcal/mol)"
          "    weight  calls  t_engine  t_total")


def format_line(s: CycleStats) -> str:
    def f(x, fmt, width):
        return (fmt % x) if x is not None else "-".rjust(width)
    return "%5s  %s  %s  %s  %6.4f  %6.2f  %s  %s  %17s  %s  %5d  %7.1fs  %6.1fs%s" % (
        s.cycle if isinstance(s.cycle, str) else "%d" % s.cycle,
        f(s.r_work, "%6.4f", 6), f(s.r_free, "%6.4f", 6), f(s.gap, "%5.3f", 5),
        s.bond_rmsd, s.angle_rmsd, f(s.clashscore, "%5.1f", 5), f(s.map_cc, "%7.4f", 7),
        f(s.restraint_energy, "%17.2f", 17), f(s.weight, "%8.4g", 8),
        s.engine_calls, s.engine_seconds, s.seconds,
        ("  " + s.note) if s.note else "")


BROKEN_BOND_DEVIATION = 0.4   # A from the library ideal: the bond has broken or formed


def broken_bonds(model, limit=BROKEN_BOND_DEVIATION, max_report=5):
    """Library bonds (hydrogens included) longer or shorter than ideal by more
    than `limit`, as 'atom - atom d=... (ideal ...)' texts: a QM energy can
    break a bond or move a proton to another atom, which the library never
    does (a zwitterionic peptide in vacuum lost CO2 and an N-H proton)."""
    pairs, ideal = library_bonds(model)
    xyz = np.array(model.get_sites_cart())
    d = np.linalg.norm(xyz[pairs[:, 0]] - xyz[pairs[:, 1]], axis=1)
    atoms = model.get_hierarchy().atoms()
    out = ["%s - %s d=%.2f A (ideal %.2f)" % (
        atoms[int(i)].id_str().strip(), atoms[int(j)].id_str().strip(), dk, ik)
        for (i, j), dk, ik in zip(pairs, d, ideal) if abs(dk - ik) > limit]
    return out[:max_report] + (["... %d more" % (len(out) - max_report)]
                               if len(out) > max_report else [])


def engine_counters(model):
    """(calls, seconds) of the QM engine behind the model's restraints."""
    grm = model.get_restraints_manager().geometry
    return getattr(grm, "n_engine_calls", 0), getattr(grm, "engine_seconds", 0.0)


def restraint_energy(model):
    """Unnormalised restraint target (kcal/mol) at the model's sites."""
    grm = model.get_restraints_manager().geometry
    es = grm.energies_sites(sites_cart=model.get_sites_cart(), compute_gradients=False)
    return es.residual_sum

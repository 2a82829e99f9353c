"""Perturbed starting models: geometry-restraints MD at 1000 K, stopped when
the mean atomic shift from the reference reaches the dose (as published;
docs/benchmark_1us0.md, Protocol).

The MD potential is the library restraints only (no H-bond term), so the
helix's H-bonds break as in the published study. Each model is one seeded
run from the reference; seed, steps and the shift reached are recorded.
"""

from dataclasses import dataclass, asdict

import iotbx.pdb
from libtbx.utils import null_out
from scitbx.array_family import flex

TEMPERATURE = 1000.0
TIME_STEP = 0.0005      # ps, phenix.dynamics default
MAX_STEPS = 20000


@dataclass
class Perturbation:
    dose: float
    seed: int
    mean_shift: float     # mean atomic shift reached (A), >= dose unless capped
    rmsd: float           # all-atom rmsd to the reference (A)
    reached: bool         # False when MAX_STEPS ran out first

    def as_dict(self):
        return asdict(self)


class Perturber:
    """Processes the reference once; `run(dose, seed)` returns (pdb text, Perturbation)."""

    def __init__(self, reference_pdb, temperature=TEMPERATURE, max_steps=MAX_STEPS):
        from qr_phenix.monomer_library import process_model
        self.pdb_input = iotbx.pdb.input(file_name=reference_pdb)
        self.hierarchy = self.pdb_input.construct_hierarchy()
        # nuclear X-H targets, so MD keeps the reference's X-H lengths
        self.model = process_model(reference_pdb, nuclear=True, log=null_out())
        names = [a.id_str() for a in self.model.get_hierarchy().atoms()]
        if names != [a.id_str() for a in self.hierarchy.atoms()]:
            raise RuntimeError("processed model changed the atom order of the reference")
        self.reference_sites = self.model.get_sites_cart().deep_copy()
        self.temperature = temperature
        self.max_steps = max_steps

    def run(self, dose, seed):
        from mmtbx.dynamics import cartesian_dynamics
        xrs = self.model.get_xray_structure().deep_copy_scatterers()
        xrs.set_sites_cart(self.reference_sites)
        gc = cartesian_dynamics.gradients_calculator_geometry_restraints(
            restraints_manager=self.model.get_restraints_manager())
        cartesian_dynamics.run(
            xray_structure=xrs, gradients_calculator=gc,
            temperature=self.temperature, n_steps=self.max_steps,
            time_step=TIME_STEP, stop_at_diff=dose, random_seed=seed,
            stop_cm_motion=True, log=null_out())
        sites = xrs.sites_cart()
        d = flex.sqrt((sites - self.reference_sites).dot())
        shift = flex.mean(d)
        rmsd = flex.mean(d * d) ** 0.5
        h = self.hierarchy.deep_copy()
        h.atoms().set_xyz(sites)
        text = h.as_pdb_string(crystal_symmetry=self.pdb_input.crystal_symmetry())
        return text, Perturbation(dose=dose, seed=seed, mean_shift=round(shift, 4),
                                  rmsd=round(rmsd, 4), reached=bool(shift >= dose))


def seed_for(dose, index, base_seed=0):
    """Distinct, reproducible seed per (dose, model): independent of the dose list."""
    return int(base_seed) * 100000 + int(round(dose * 100)) * 100 + int(index)

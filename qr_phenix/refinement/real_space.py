"""Real-space refinement against a cryo-EM (or any) map, and geometry-only
minimisation.

Real space: cctbx.maptbx.real_space_refinement_simple.lbfgs minimises
    T = -w_map * sum(map at atoms) + E_restraints
with the restraints manager handed to it (the QM manager when installed).
w_map = scale * |g_restraints| / |g_map|, the same ratio logic as X-ray, so
the trial scales mean the same in both modes.  Trials are judged on
heavy-atom geometry against the library and the model-map CC (all-atom rmsd
with X-ray X-H lengths misleads with hydrogens: on the 94-atom helix it
made mmtbx's weight search pick a map weight 40x too strong for QM, with
8 deg angle rmsd).
"""

from cctbx import maptbx
import cctbx.maptbx.real_space_refinement_simple as rs_simple
from cctbx.geometry_restraints import lbfgs as geometry_lbfgs
from scitbx.array_family import flex

from qr_phenix.refinement import statistics as stats_mod
from qr_phenix.refinement import weights as weights_mod
from qr_phenix.refinement.driver import MacroCycleRefinement, termination


class RealSpaceRefinement(MacroCycleRefinement):
    score = "map_cc"

    def __init__(self, model, map_model_manager, resolution, params, limits, quantum,
                 **kwargs):
        self.mmm = map_model_manager
        self.resolution = resolution
        self.map_data = map_model_manager.map_manager().map_data()
        self.unit_cell = map_model_manager.map_manager().crystal_symmetry().unit_cell()
        super().__init__(model, params, limits, quantum, **kwargs)

    def _grm(self):
        return self.model.get_restraints_manager().geometry

    def gradient_ratio(self):
        sites = self.model.get_sites_cart()
        g_map = maptbx.real_space_gradients_simple(
            unit_cell=self.unit_cell, density_map=self.map_data, sites_cart=sites,
            delta=self.resolution / 4., selection=flex.bool(sites.size(), True))
        g_restraints = self._grm().energies_sites(sites_cart=sites,
                                                  compute_gradients=True).gradients
        return weights_mod.gradient_ratio(g_restraints.as_double(), g_map.as_double(),
                                          self.params.gradient_outlier_cutoff)

    def minimise(self, scale):
        weight = scale * self.reference_ratio()
        minimiser = rs_simple.lbfgs(
            sites_cart=self.model.get_sites_cart().deep_copy(), density_map=self.map_data, gradients_method="tricubic",
            unit_cell=self.unit_cell, geometry_restraints_manager=self._grm(),
            real_space_target_weight=weight,
            real_space_gradients_delta=self.resolution / 4.,
            lbfgs_termination_params=termination(self.iterations))
        self.model.set_sites_cart(minimiser.sites_cart)

    def measure(self, cycle):
        return stats_mod.CycleStats(cycle=cycle, map_cc=map_model_cc(
            self.model, self.mmm, self.resolution))


def map_model_cc(model, mmm, resolution):
    """CC between the map and a model map, inside a mask around the model."""
    from mmtbx.maps.correlation import five_cc
    mm = mmm.map_manager()
    result = five_cc(map=mm.map_data(), xray_structure=model.get_xray_structure(),
                     d_min=resolution, compute_cc_mask=True, compute_cc_box=False,
                     compute_cc_image=False, compute_cc_volume=False,
                     compute_cc_peaks=False)
    return result.result.cc_mask


class GeometryMinimisation(MacroCycleRefinement):
    """Restraints only (no data): regularise a model with QM or the library."""

    uses_data = False

    def minimise(self, scale):
        sites = self.model.get_sites_cart().deep_copy()
        geometry_lbfgs.lbfgs(
            sites_cart=sites,
            geometry_restraints_manager=self.model.get_restraints_manager().geometry,
            lbfgs_termination_params=termination(self.iterations))
        self.model.set_sites_cart(sites)

    def measure(self, cycle):
        return stats_mod.CycleStats(cycle=cycle)

"""Reciprocal-space coordinate refinement with mmtbx's L-BFGS driver.

mmtbx.refinement.minimization.lbfgs minimises
    T = wx * wx_scale * E_data + w * E_restraints
with E_restraints taken from the model's restraints manager, which is where
qr_phenix installs the QM manager.  We set wx = |g_restraints|/|g_data| of the
start model (see driver.reference_ratio), wx_scale = the chosen scale, w = 1.
Hydrogens are refined like every other atom.
"""

from libtbx import group_args
from libtbx.utils import null_out
from scitbx.array_family import flex

import mmtbx
import mmtbx.refinement.minimization
from mmtbx.refinement import weights as mmtbx_weights

from qr_phenix.refinement import statistics as stats_mod
from qr_phenix.refinement import weights as weights_mod
from qr_phenix.refinement.driver import MacroCycleRefinement, termination

TARGET_NAMES = {"ml": "ml", "ls": "ls_wunit_k1"}


def set_refine_sites(model):
    from mmtbx.refinement import refinement_flags
    n = model.get_number_of_atoms()
    model.set_refinement_flags(refinement_flags.manager(
        individual_sites=True, sites_individual=flex.bool(n, True)))
    model.set_refine_individual_sites()


class XrayRefinement(MacroCycleRefinement):

    def __init__(self, model, fmodel, params, limits, quantum, **kwargs):
        self.fmodel = fmodel
        super().__init__(model, params, limits, quantum, **kwargs)
        assert fmodel.xray_structure is model.get_xray_structure()
        set_refine_sites(model)
        fmodel.update(target_name=TARGET_NAMES[params.target])
        self.update_scales()

    def update_scales(self):
        if self.params.bulk_solvent:
            self.fmodel.update_all_scales(remove_outliers=False, log=null_out())
        else:
            # overall and anisotropic scales only: the mask term stays zero
            self.fmodel.update_all_scales(remove_outliers=False, log=null_out(),
                                          update_f_part1=False, bulk_solvent_and_scaling=False)

    def sites_changed(self):
        self.fmodel.update_xray_structure(xray_structure=self.model.get_xray_structure(),
                                          update_f_calc=True)
        self.update_scales()

    def gradient_ratio(self):
        xrs = self.fmodel.xray_structure
        xrs.scatterers().flags_set_grads(state=False)
        xrs.scatterers().flags_set_grad_site(iselection=xrs.all_selection().iselection())
        g_data = self.fmodel.one_time_gradients_wrt_atomic_parameters(site=True).packed()
        g_restraints = self.model.restraints_manager_energies_sites(
            compute_gradients=True).gradients
        return weights_mod.gradient_ratio(
            g_restraints.as_double(), g_data, self.params.gradient_outlier_cutoff)

    def minimise(self, scale):
        tw = group_args(xyz_weights_result=mmtbx_weights.weights(
            wx=self.reference_ratio(), wx_scale=scale, w=1.0))
        mmtbx.refinement.minimization.lbfgs(
            fmodels=mmtbx.fmodels(fmodel_xray=self.fmodel),
            restraints_manager=self.model.get_restraints_manager(),
            model=self.model, target_weights=tw, refine_xyz=True,
            lbfgs_termination_params=termination(self.params.max_iterations),
            collect_monitor=False, log=null_out())
        self.model.set_sites_cart(self.fmodel.xray_structure.sites_cart())
        self.update_scales()

    def measure(self, cycle):
        return stats_mod.CycleStats(cycle=cycle, r_work=self.fmodel.r_work(),
                                    r_free=self.fmodel.r_free())

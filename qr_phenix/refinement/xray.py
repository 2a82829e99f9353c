"""Reciprocal-space coordinate refinement with mmtbx's L-BFGS driver.

mmtbx.refinement.minimization.lbfgs minimises
    T = wx * wx_scale * E_data + w * E_restraints
with E_restraints taken from the model's restraints manager, which is where
qr_phenix installs the QM manager.  We set wx = |g_restraints|/|g_data| of the
start model (see driver.reference_ratio), wx_scale = the chosen scale, w = 1.
Hydrogens are refined like every other atom.  With `adp` on, each
macro-cycle refines isotropic B after the coordinates (refinement/adp.py).
"""

from libtbx import group_args
from libtbx.utils import null_out
from scitbx.array_family import flex

import mmtbx
import mmtbx.bulk_solvent.bulk_solvent_and_scaling as bss
import mmtbx.refinement.minimization
from mmtbx.refinement import weights as mmtbx_weights

from qr_phenix.refinement import statistics as stats_mod
from qr_phenix.refinement import weights as weights_mod
from qr_phenix.refinement.driver import MacroCycleRefinement, termination

TARGET_NAMES = {"ml": "ml", "ls": "ls_wunit_k1"}


def update_scales(fmodel, bulk_solvent, back_trace=False):
    """Overall and anisotropic scales always; the bulk-solvent mask term only
    when asked (without it k_mask stays zero).  back_trace moves the overall
    isotropic B of the scale into the atoms (after ADP steps, so atomic B
    stay on an absolute scale)."""
    if fmodel.twin_law is not None:   # mmtbx's twin scaler has its own rules
        fmodel.update_all_scales(log=null_out())
        return
    scaling = bss.master_params.extract()
    scaling.bulk_solvent = bool(bulk_solvent)
    fmodel.update_all_scales(remove_outliers=False, log=null_out(), params=scaling,
                             update_f_part1=False, apply_back_trace=back_trace)


def set_refine_sites(model):
    from mmtbx.refinement import refinement_flags
    n = model.get_number_of_atoms()
    model.set_refinement_flags(refinement_flags.manager(
        individual_sites=True, sites_individual=flex.bool(n, True)))
    model.set_refine_individual_sites()


class XrayRefinement(MacroCycleRefinement):

    def __init__(self, model, fmodel, params, limits, quantum, adp_mode="none", **kwargs):
        self.fmodel = fmodel
        super().__init__(model, params, limits, quantum, **kwargs)
        assert fmodel.xray_structure is model.get_xray_structure()
        set_refine_sites(model)
        if fmodel.twin_law is None:   # twinned data keep mmtbx's twin target
            fmodel.update(target_name=TARGET_NAMES[params.target])
        self.update_scales()
        self.adp = None
        if adp_mode != "none":
            from qr_phenix.refinement.adp import AdpRefinement
            self.adp = AdpRefinement(model, fmodel, adp_mode, params.adp_weight_trials,
                                     limits, max_iterations=params.max_iterations)

    def update_scales(self, back_trace=False):
        update_scales(self.fmodel, self.params.bulk_solvent, back_trace)

    def k_mask_max(self):
        """Largest bulk-solvent scale (None for twinned data: mmtbx's twin
        model keeps its own solvent parameters)."""
        if self.fmodel.twin_law is not None:
            return None
        return max(max(k) if k.size() else 0.0 for k in self.fmodel.k_masks())

    def get_state(self):
        state = super().get_state()
        xrs = self.fmodel.xray_structure
        state["b_iso"] = list(xrs.b_iso_or_b_equiv())
        aniso = xrs.use_u_aniso()
        if aniso.count(True):     # the input's ANISOU: a start handed back keeps them
            u_cart = xrs.scatterers().extract_u_cart(xrs.unit_cell())
            state["u_aniso"] = [[int(i)] + list(u_cart[i]) for i in aniso.iselection()]
        return state

    def set_state(self, state):
        if "b_iso" in state:
            xrs = self.fmodel.xray_structure
            xrs.convert_to_isotropic()
            xrs.set_b_iso(values=flex.double(state["b_iso"]))
            if state.get("u_aniso"):
                selection = flex.size_t([row[0] for row in state["u_aniso"]])
                u_cart = xrs.scatterers().extract_u_cart(xrs.unit_cell())
                for row in state["u_aniso"]:
                    u_cart[row[0]] = tuple(row[1:])
                xrs.convert_to_anisotropic(selection=selection)
                xrs.set_u_cart(u_cart=u_cart, selection=selection)
        super().set_state(state)

    def before_first_cycle(self):
        if self.adp is not None:
            r_work, r_free = self.fmodel.r_work(), self.fmodel.r_free()
            n = self.adp.convert_to_isotropic()
            if n:
                # the scales were fitted to the anisotropic model: refit them,
                # or the first R factors read the mismatch (3kyi, TLS ANISOU:
                # R-free 0.315 as given, 0.407 with stale scales, 0.322 refitted)
                self.update_scales()
                print("  %d anisotropic ADPs (ANISOU) converted to isotropic B for"
                      " refinement: R-work %.4f -> %.4f, R-free %.4f -> %.4f"
                      % (n, r_work, self.fmodel.r_work(), r_free, self.fmodel.r_free()),
                      file=self.log)
            self._refine_adp()
            print("  B refined before the first coordinate step: R-work %.4f R-free %.4f"
                  % (self.fmodel.r_work(), self.fmodel.r_free()), file=self.log)

    def _refine_adp(self):
        trials, chosen = self.adp.run()
        set_refine_sites(self.model)
        self.update_scales(back_trace=True)
        return trials, chosen

    def after_sites(self, cycle, stats):
        if self.adp is None:
            return
        trials, chosen = self._refine_adp()
        m = self.measure(cycle)
        stats.r_work, stats.r_free = m.r_work, m.r_free
        stats.mean_b = m.mean_b
        if trials:
            stats.adp_weight = chosen.scale
            print("  ADP trials (scale R-work R-free rms dB(bonded) verdict): " + "; ".join(
                "%g %.4f %.4f %.1f %s" % (t.scale, t.r_work, t.r_free, t.delta_b, t.verdict)
                for t in trials), file=self.log)
        stats.add_note("B %s" % self.adp.mode)

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
            lbfgs_termination_params=termination(self.iterations),
            collect_monitor=False, log=null_out())
        self.model.set_sites_cart(self.fmodel.xray_structure.sites_cart())
        self.update_scales()

    def measure(self, cycle):
        return stats_mod.CycleStats(
            cycle=cycle, r_work=self.fmodel.r_work(), r_free=self.fmodel.r_free(),
            mean_b=flex.mean(self.fmodel.xray_structure.b_iso_or_b_equiv()))

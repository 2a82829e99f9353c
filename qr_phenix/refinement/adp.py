"""Isotropic ADP refinement with mmtbx's machinery, alternating with sites.

    T = wu * scale * E_data(B) + E_adp_restraints(B)

E_data is the fmodel target; E_adp_restraints are mmtbx's similarity
restraints between bonded and nearby atoms (adp_refinement's `iso` scope).
wu is the gradient-norm ratio of the two (mmtbx.refinement.weights), and
`scale` is chosen from trials by phenix.refine's ADP rules: R-free - R-work
within the limit, R-free within 1.5 % of the lowest, rms(B_i - B_j) of
bonded atoms within max(20, 0.2 <B>) A^2, then the lowest R-free.

Hydrogens are not refined: each H takes the B of the heavy atom it is bonded
to, as riding hydrogens do in phenix.refine (an H alone has too little
density for a B of its own at these resolutions).

Two parameterisations: `individual` (one B per heavy atom) and `group` (one
B per residue, for data with few reflections per atom).
"""

from dataclasses import dataclass
from typing import List

import numpy as np
from libtbx import group_args
from libtbx.utils import null_out
from scitbx.array_family import flex

import mmtbx
import mmtbx.refinement.minimization
from mmtbx.refinement import adp_refinement, refinement_flags
from mmtbx.refinement import weights as mmtbx_weights

from qr_phenix.refinement.driver import termination
from qr_phenix.monomer_library import library_bonds

# auto: one B per heavy atom with at least this many work reflections per
# heavy atom (phenix.refine refines individual B at 3-4 A; 1va7, 2.9 A, 3 per
# atom: R-free 0.265 individual vs 0.294 grouped), else one B per residue
MIN_REFLECTIONS_PER_ATOM = 1.5

master_phil_str = """
adp = *auto individual group none
  .type = choice
  .help = "X-ray: isotropic B refinement after each coordinate step. auto: \
           individual when there are at least %g work reflections per non-H \
           atom, else one B per residue; none keeps B fixed"
  .short_caption = ADP refinement
adp_weight_trials = 1 4 16 64
  .type = floats
  .help = "Scales of the ADP data weight tried each macro-cycle"
""" % MIN_REFLECTIONS_PER_ATOM

R_FREE_RANGE_WIDTH = 0.015     # phenix.refine's r_free_range_width at low resolution
DELTA_B_BONDED_MIN = 20.0      # A^2; ...and 0.2 x <B> (adp_refinement, d_min >= 3 A)
DELTA_B_BONDED_FRACTION = 0.2
B_MIN, B_MAX = 1.0, 300.0


def resolve_mode(mode, n_work_reflections, n_heavy_atoms):
    """'auto' -> individual or group by the data-to-parameter ratio."""
    if mode is None:      # PHIL reads the choice "none" as None
        return "none"
    if mode != "auto":
        return mode
    if n_work_reflections >= MIN_REFLECTIONS_PER_ATOM * max(1, n_heavy_atoms):
        return "individual"
    return "group"


@dataclass
class AdpTrial:
    scale: float
    r_work: float
    r_free: float
    delta_b: float
    mean_b: float
    verdict: str = ""

    @property
    def gap(self):
        return self.r_free - self.r_work

    def as_dict(self):
        d = dict(vars(self))
        d["gap"] = self.gap
        return d


def choose_adp_trial(trials: List[AdpTrial], limits, delta_b_limit):
    """phenix.refine's order: gap, then R-free range, then <Bi-Bj>, lowest R-free."""
    pool = [t for t in trials if limits.gap_ok(t.r_work, t.r_free)] or \
        [min(trials, key=lambda t: t.gap)]
    lowest = min(t.r_free for t in pool)
    pool = [t for t in pool if t.r_free <= lowest + R_FREE_RANGE_WIDTH]
    pool = [t for t in pool if t.delta_b <= delta_b_limit] or \
        [min(pool, key=lambda t: t.delta_b)]
    best = min(pool, key=lambda t: t.r_free)
    for t in trials:
        t.verdict = "ok" if t in pool else (
            "R-free - R-work over %.3f" % limits.gap_allowed(t.r_free)
            if not limits.gap_ok(t.r_work, t.r_free) else
            "R-free over lowest + %.3f" % R_FREE_RANGE_WIDTH
            if t.r_free > lowest + R_FREE_RANGE_WIDTH else
            "rms dB(bonded) over %.1f" % delta_b_limit)
    best.verdict = "chosen"
    return best


class AdpRefinement:
    """One ADP step per macro-cycle on the X-ray target's fmodel."""

    def __init__(self, model, fmodel, mode, trial_scales, limits, max_iterations=25,
                 log=None):
        assert mode in ("individual", "group")
        self.model = model
        self.fmodel = fmodel
        self.mode = mode
        self.trial_scales = list(trial_scales)
        self.limits = limits
        self.max_iterations = max_iterations
        self.log = log or null_out()
        self.iso = adp_refinement.adp_restraints_master_params.extract().iso
        self.hd = model.get_hd_selection()
        self.heavy = ~self.hd
        self.h_parent, self.heavy_bonds = _bonded_pairs(model)
        self.groups = _residue_groups(model) if mode == "group" else None

    def convert_to_isotropic(self):
        """Isotropic B only: the input's ANISOU become their equivalent B
        (the start is scored with them first).  Returns how many."""
        xrs = self._xrs()
        n = xrs.use_u_aniso().count(True)
        if n:
            xrs.convert_to_isotropic()
            self.fmodel.update_xray_structure(xray_structure=xrs, update_f_calc=True)
        return n

    # -- helpers ---------------------------------------------------------------
    def _xrs(self):
        return self.fmodel.xray_structure

    def get_b(self):
        return self._xrs().b_iso_or_b_equiv()

    def set_b(self, b):
        xrs = self._xrs()
        xrs.set_b_iso(values=flex.double(b))
        self.fmodel.update_xray_structure(xray_structure=xrs, update_f_calc=True)

    def _ride_hydrogens(self):
        b = np.array(self.get_b())
        if len(self.h_parent):
            b[self.h_parent[:, 0]] = b[self.h_parent[:, 1]]
        self.set_b(np.clip(b, B_MIN, B_MAX))

    def delta_b_bonded(self):
        """rms(B_i - B_j) over bonded heavy atoms (A^2)."""
        if not len(self.heavy_bonds):
            return 0.0
        b = np.array(self.get_b())
        d = b[self.heavy_bonds[:, 0]] - b[self.heavy_bonds[:, 1]]
        return float(np.sqrt(np.mean(d * d)))

    def delta_b_limit(self):
        mean_b = flex.mean(self.get_b().select(self.heavy))
        return max(DELTA_B_BONDED_MIN, DELTA_B_BONDED_FRACTION * mean_b)

    # -- individual B ----------------------------------------------------------
    def _set_flags(self):
        n = self.model.get_number_of_atoms()
        self.model.set_refinement_flags(refinement_flags.manager(
            individual_adp=True, adp_individual_iso=self.heavy.deep_copy(),
            adp_individual_aniso=flex.bool(n, False)))
        self.model.set_refine_individual_adp()

    def weight_ratio(self):
        self._set_flags()
        g = mmtbx_weights.adp_gradients(fmodel=self.fmodel, model=self.model,
                                         iso_restraints=self.iso, shake=None)
        gu, gx = g.gu.norm(), g.gxu.norm()
        return gu / gx if gx > 0 and gu > 0 else 1.0

    def _minimise_individual(self, wx, scale):
        self._set_flags()
        tw = group_args(adp_weights_result=mmtbx_weights.weights(wx=wx, wx_scale=scale,
                                                                  w=1.0))
        mmtbx.refinement.minimization.lbfgs(
            fmodels=mmtbx.fmodels(fmodel_xray=self.fmodel),
            restraints_manager=self.model.get_restraints_manager(),
            model=self.model, target_weights=tw, refine_adp=True,
            iso_restraints=self.iso, h_params=group_args(refine="riding"),
            lbfgs_termination_params=termination(self.max_iterations),
            collect_monitor=False, log=null_out())

    # -- group B -------------------------------------------------------------
    def _minimise_group(self):
        import mmtbx.refinement.group
        mmtbx.refinement.group.manager(
            fmodel=self.fmodel, selections=self.groups, convergence_test=False,
            max_number_of_iterations=self.max_iterations, number_of_macro_cycles=2,
            run_finite_differences_test=False, use_restraints=True,
            restraints_weight=None, refine_adp=True, log=null_out())

    # -- one step ----------------------------------------------------------------
    def run(self):
        """Refine B; returns (trials, the chosen one), ([], None) for group B.
        The caller's fmodel and model hold the chosen B afterwards."""
        start = self.get_b().deep_copy()
        if self.mode == "group":
            self._minimise_group()
            self._ride_hydrogens()
            return [], None
        wx = self.weight_ratio()
        trials, bs = [], []
        for scale in self.trial_scales:
            self.set_b(start)
            self._minimise_individual(wx, scale)
            self._ride_hydrogens()
            trials.append(AdpTrial(scale=scale, r_work=self.fmodel.r_work(),
                                   r_free=self.fmodel.r_free(),
                                   delta_b=self.delta_b_bonded(),
                                   mean_b=float(flex.mean(self.get_b()))))
            bs.append(self.get_b().deep_copy())
        best = choose_adp_trial(trials, self.limits, self.delta_b_limit())
        self.set_b(bs[trials.index(best)])
        return trials, best


def _bonded_pairs(model):
    """From the library's bonds: [(H, its heavy atom)] and [(heavy, heavy)]."""
    hd = np.array(model.get_hd_selection(), dtype=bool)
    pairs, _ = library_bonds(model)
    h_first = hd[pairs[:, 0]]
    mixed = h_first != hd[pairs[:, 1]]
    riding = np.where(h_first[mixed, None], pairs[mixed], pairs[mixed][:, ::-1])
    heavy = pairs[~hd[pairs[:, 0]] & ~hd[pairs[:, 1]]]
    return np.unique(riding, axis=0).reshape(-1, 2), np.unique(heavy, axis=0).reshape(-1, 2)


def _residue_groups(model):
    return [rg.atoms().extract_i_seq() for rg in model.get_hierarchy().residue_groups()]

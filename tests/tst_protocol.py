"""The refinement protocol's rules, with a scripted minimiser (weight search,
annealing, the model handed back) and with real data (bulk solvent, twin
law, B refinement, options that must have an effect)."""

from types import SimpleNamespace

import numpy as np
import pytest
from libtbx.utils import null_out

from qr_phenix.command_line import run_checked
from qr_phenix.programs.refine import Program
from qr_phenix.refinement import driver
from qr_phenix.refinement import statistics as stats_mod
from qr_phenix.refinement.weights import Limits

from paths import ENTRIES, shared


class Scripted(driver.MacroCycleRefinement):
    """Each minimisation shifts the model by 0.001 A x scale (so models
    differ) and reports R factors and geometry from given functions of the
    scale: only the driver's rules act."""

    def __init__(self, model, limits, r_free_of, bond_of, gap_of=lambda scale: 0.03,
                 **params):
        p = dict(macro_cycles=6, max_iterations=1, weight_trials=[1.0], r_tolerance=-1.0,
                 shift_tolerance=-1.0, anneal="off", weight_search="every")
        p.update(params)
        super().__init__(model, SimpleNamespace(**p), limits, quantum=False, log=null_out())
        self.r_free_of, self.bond_of, self.gap_of = r_free_of, bond_of, gap_of
        self.scale = None
        self.geometry = lambda sites: ((0.010, 1.0) if self.scale is None
                                       else (bond_of(self.scale), 1.0))

    def minimise(self, scale):
        self.scale = scale
        sites = np.array(self.get_sites()) + 0.001 * scale
        self.model.set_sites_cart(driver_flex(sites))

    def get_state(self):
        return dict(super().get_state(), scale=self.scale)

    def set_state(self, state):
        self.scale = state["scale"]
        super().set_state(state)

    def measure(self, cycle):
        if self.scale is None:
            return stats_mod.CycleStats(cycle=cycle, r_work=0.20, r_free=0.22)
        r_free = self.r_free_of(self.scale)
        return stats_mod.CycleStats(cycle=cycle, r_work=r_free - self.gap_of(self.scale),
                                    r_free=r_free)


def driver_flex(sites):
    from scitbx.array_family import flex
    return flex.vec3_double(sites)


@pytest.fixture(scope="module")
def helix_model(helix_pdb):
    from qr_phenix.monomer_library import process_model
    return process_model(helix_pdb)


def test_weight_search_goes_on_toward_stronger_restraints(helix_model):
    # only scales <= 1/8 keep bonds within 0.015 A
    limits = Limits(bond_rmsd=0.015, angle_rmsd=2.0, gap=0.05)
    ref = Scripted(helix_model.deep_copy(), limits, r_free_of=lambda s: 0.20,
                   bond_of=lambda s: 0.1 * s, macro_cycles=1)
    result = ref.run()
    scales = [t.scale for t in result.trials]
    assert scales == [1.0, 0.5, 0.25, 0.125]
    assert result.cycles[0].weight == 0.125
    assert [t.verdict.startswith("chosen") for t in result.trials] == [False] * 3 + [True]


def test_start_model_is_handed_back_when_no_refined_model_is_better(helix_model):
    model = helix_model.deep_copy()
    start = np.array(model.get_sites_cart())
    limits = Limits(bond_rmsd=0.015, angle_rmsd=2.0, gap=0.05)
    ref = Scripted(model, limits, r_free_of=lambda s: 0.26, bond_of=lambda s: 0.005)
    result = ref.run()
    assert result.selected == 0 and "start model" in result.selection_note
    assert result.final.r_free == pytest.approx(0.22)
    assert np.allclose(np.array(model.get_sites_cart()), start, atol=1e-6)


def test_best_cycle_is_handed_back_not_the_last(helix_model):
    model = helix_model.deep_copy()
    limits = Limits(bond_rmsd=0.015, angle_rmsd=2.0, gap=0.05)
    calls = []

    def r_free_of(scale):          # improves for three cycles, then gets worse
        calls.append(scale)
        return 0.21 - 0.01 * min(len(calls), 9) + 0.002 * max(0, len(calls) - 9) ** 2
    ref = Scripted(model, limits, r_free_of=r_free_of, bond_of=lambda s: 0.005,
                   macro_cycles=6)
    result = ref.run()
    best = min(range(1, 7), key=lambda i: result.cycles[i - 1].r_free)
    assert result.selected == best < 6
    kept = np.array(model.get_sites_cart())
    assert np.allclose(kept, np.array(ref.state_of(best)["sites"]), atol=1e-5)


def test_qm_stage_stops_two_cycles_after_its_best_model(helix_model):
    """Every cycle after the first is worse: the full protocol gives up after
    STALE_CYCLES such cycles, the QM stage (which starts from a converged
    library model) after stages.QM_STALE_CYCLES."""
    import io
    from qr_phenix.refinement import stages
    from qr_phenix.refinement.progress import CostReporter
    limits = Limits(bond_rmsd=0.015, angle_rmsd=2.0, gap=0.05)

    def run(stale_cycles):
        calls = []

        def r_free_of(scale):      # measured twice a cycle: its trial, its model
            calls.append(scale)
            return 0.20 if len(calls) <= 2 else 0.21
        ref = Scripted(helix_model.deep_copy(), limits, r_free_of=r_free_of,
                       bond_of=lambda s: 0.005, macro_cycles=8)
        ref.reporter = CostReporter(io.StringIO())
        if stale_cycles is not None:
            ref.stale_cycles = stale_cycles
        result = ref.run()
        assert result.selected == 1 and result.converged
        # the cost estimate's lower figure, re-planned after each cycle: the
        # run stopped where it said the run could stop at the earliest
        assert ref.reporter.planned.earliest_stop == len(result.cycles) == 1 + ref.stale_cycles
        return len(result.cycles)
    assert run(None) == 1 + driver.STALE_CYCLES == 5
    assert run(stages.QM_STALE_CYCLES) == 1 + 2


def test_a_lower_r_free_within_the_noise_keeps_an_xray_run_going(helix_model):
    """1va7's QM stage: cycle 3's R-free is the lowest yet but within the
    tolerance of cycle 1's, which has fewer clashes and stays the model to
    hand back.  R-free still falls, so the run goes on (and cycle 4 is
    better); it stops two cycles after the last such progress."""
    from qr_phenix.refinement import stages
    r_free = {"start": 0.2672, 1: 0.2627, 2: 0.2684, 3: 0.2624, 4: 0.2560, 5: 0.2590,
              6: 0.2600, 7: 0.2600}
    clashes = {0: 5.1, 1: 2.3, 2: 5.6, 3: 4.3, 4: 3.0, 5: 3.0, 6: 3.0, 7: 3.0}

    class ByCycle(Scripted):
        def measure(self, cycle):
            s = super().measure(cycle)
            s.r_free, s.r_work = r_free[cycle], r_free[cycle] - 0.03
            return s
    limits = Limits(bond_rmsd=0.015, angle_rmsd=2.0, gap=0.05)
    ref = ByCycle(helix_model.deep_copy(), limits, r_free_of=lambda s: 0.0,
                  bond_of=lambda s: 0.005, macro_cycles=7)
    ref.validator = lambda model, stats: setattr(stats, "clashscore", clashes[stats.cycle])
    ref.stale_cycles = stages.QM_STALE_CYCLES
    result = ref.run()
    assert len(result.cycles) == 6 and result.selected == 4


def test_an_over_fitted_cycle_does_not_stop_the_run_before_its_remedy(helix_model):
    """X-ray: cycles 2 and 3 over-fit (R gap over the limit), each followed by
    restraints x2; the cycle at the new weight runs although the stale rule
    alone would stop after cycle 3, and it finds the best model."""
    import io
    from qr_phenix.refinement import stages
    from qr_phenix.refinement.progress import CostReporter
    limits = Limits(bond_rmsd=0.015, angle_rmsd=2.0, gap=0.05)
    calls = []

    def r_free_of(scale):      # cycle 1 measures twice (its trial, its model)
        calls.append(scale)
        if len(calls) <= 2:
            return 0.20
        return 0.19 if scale <= 0.25 and calls.count(scale) == 1 else 0.21
    ref = Scripted(helix_model.deep_copy(), limits, r_free_of=r_free_of,
                   bond_of=lambda s: 0.012,      # within limits, not well inside
                   gap_of=lambda s: 0.03 if len(calls) <= 2 or s <= 0.25 else 0.08,
                   macro_cycles=8, weight_search="first")
    ref.stale_cycles = stages.QM_STALE_CYCLES
    ref.reporter = CostReporter(io.StringIO())
    result = ref.run()
    assert [c.weight for c in result.cycles] == [1.0, 1.0, 0.5, 0.25, 0.25, 0.25]
    assert result.selected == 4 and result.final.r_free == pytest.approx(0.19)
    assert ref.reporter.planned.earliest_stop == len(result.cycles)


def test_equal_fits_are_told_apart_by_clashscore_then_by_cycle():
    """Of refined models within the R-free tolerance of the lowest, the one
    with the fewest clashes is handed back; of equal clashscores, the latest;
    a model with fewer clashes but a worse fit is not."""
    from qr_phenix.refinement import best_model
    limits = Limits(bond_rmsd=0.015, angle_rmsd=2.0, gap=0.08)
    near = best_model.R_FREE_TOLERANCE / 2

    def stats(cycle, r_free, clashscore):
        return stats_mod.CycleStats(cycle=cycle, r_work=r_free - 0.05, r_free=r_free,
                                    bond_rmsd=0.01, angle_rmsd=1.0, clashscore=clashscore)
    start = stats(0, 0.30, 5.0)
    cycles = [stats(1, 0.2600, 1.0), stats(2, 0.2520, 4.1), stats(3, 0.2509, 4.3),
              stats(4, 0.2509 + near, 4.1)]
    index, why = best_model.choose(start, cycles, limits)
    assert index == 4 and "fewest clashes" in why
    cycles[3].clashscore = 4.3
    assert best_model.choose(start, cycles, limits)[0] == 2
    for c in cycles:          # validation off: the latest within the tolerance
        c.clashscore = None
    index, why = best_model.choose(start, cycles, limits)
    assert index == 4 and "latest" in why and "clashes" not in why


def test_data_x2_never_goes_to_a_weight_whose_trial_over_fitted(helix_model):
    """Geometry well inside the limits raises the data weight, but not to a
    scale whose weight trial was over the gap limit by more than the noise."""
    limits = Limits(bond_rmsd=0.015, angle_rmsd=2.0, gap=0.05)

    def weights_with(gap_of_strongest):
        ref = Scripted(helix_model.deep_copy(), limits,
                       r_free_of=lambda s: {0.5: 0.22, 2.0: 0.20}.get(s, 0.21),
                       bond_of=lambda s: 0.002, weight_trials=[0.5, 1.0, 2.0],
                       weight_search="first", macro_cycles=2,
                       gap_of=lambda s: gap_of_strongest if s >= 2 else 0.03)
        return [c.weight for c in ref.run().cycles]
    assert weights_with(0.06) == [1.0, 1.0]      # trial 2 over-fitted: stays at 1
    assert weights_with(0.051) == [1.0, 2.0]     # within the noise: data x2


def test_cost_plan_expects_the_middle_xray_stop_and_the_earliest_map_stop(helix_model):
    """The plan the cost estimate reads: the first search's extra trials are
    optional; X-ray runs are expected to stop in the middle (rounded up)
    between the earliest stop and the last cycle, with half the extra trials,
    map runs once the first cycle is stale_cycles old, with none (what the
    measured QM stages did)."""
    limits = Limits(bond_rmsd=0.015, angle_rmsd=2.0, gap=0.05)
    ref = Scripted(helix_model.deep_copy(), limits, r_free_of=lambda s: 0.2,
                   bond_of=lambda s: 0.005, weight_trials=[0.5, 1.0], weight_search="first")
    ref.stale_cycles, ref.max_extra_trials = 2, 3
    ref._best, ref._fixed_scale = (0, None), None
    start = stats_mod.CycleStats(cycle=0, r_work=0.2, r_free=0.22, bond_rmsd=0.01,
                                 angle_rmsd=1.0)
    fresh = SimpleNamespace(start=start, cycles=[], scale=None)
    xray = ref.plan(fresh, 5)
    assert [(s.cycle, s.optional) for s in xray.steps] == \
        [(1, False)] * 2 + [(1, True)] * 3 + [(c, False) for c in (2, 3, 4, 5)]
    assert (xray.earliest_stop, xray.expected_stop, xray.expected_extra_trials) == (2, 4, 2)
    assert len(xray.steps_to(xray.expected_stop, 2)) == 2 + 2 + 3   # cycles 2-4
    assert ref.plan(fresh, 6).expected_stop == 4
    ref.score = "map_cc"
    maps = ref.plan(fresh, 5)
    assert (maps.earliest_stop, maps.expected_stop, maps.expected_extra_trials) == (2, 3, 0)
    assert len(maps.steps_to(maps.expected_stop, 0)) == 2 + 2   # trials, cycles 2 and 3
    # re-planned after cycle 1 (the best model so far): a map run still
    # expects to stop after cycle 3; after an improving cycle 3, after cycle 5
    ref._best = (1, None)
    after_1 = ref.plan(SimpleNamespace(cycles=[None], scale=0.5), 5)
    assert [s.label for s in after_1.steps][0] == "cycle 2 of 5"
    assert (after_1.earliest_stop, after_1.expected_stop) == (3, 3)
    ref._best = (3, None)
    later = ref.plan(SimpleNamespace(cycles=[None] * 3, scale=0.5), 5)
    assert [s.label for s in later.steps] == ["cycle 4 of 5", "cycle 5 of 5"]
    assert (later.earliest_stop, later.expected_stop) == (5, 5)
    # an X-ray run whose cycle 3 is the best so far: the middle of 5..8 is 7
    ref.score = "r_free"
    within = stats_mod.CycleStats(cycle=1, r_work=0.18, r_free=0.2, weight=0.5,
                                  bond_rmsd=0.01, angle_rmsd=1.0)
    three = SimpleNamespace(start=start, cycles=[within] * 3, scale=0.5)
    assert (ref.plan(three, 5).expected_stop, ref.plan(three, 8).expected_stop) == (5, 7)


def test_map_model_within_the_cc_tolerance_of_the_start_is_handed_back():
    """Maps as X-ray: a refined model whose fit is worse by less than the
    tolerance (noise) is handed back; one worse by more is not."""
    from qr_phenix.refinement import best_model
    limits = Limits(bond_rmsd=0.015, angle_rmsd=2.0, gap=0.05)

    def stats(cycle, cc):
        return stats_mod.CycleStats(cycle=cycle, map_cc=cc, bond_rmsd=0.01, angle_rmsd=1.0,
                                    clashscore=2.0)
    start = stats(0, 0.9950)
    near = best_model.MAP_CC_TOLERANCE / 2
    index, _ = best_model.choose(start, [stats(1, 0.9950 - near)], limits, "map_cc")
    assert index == 1
    index, why = best_model.choose(start, [stats(1, 0.9950 - 2 * best_model.MAP_CC_TOLERANCE)],
                                   limits, "map_cc")
    assert index == 0 and "map CC within" in why


def test_qm_stage_hands_back_a_qm_model_within_the_noise_of_the_library_model():
    """The QM stage's start is the library model.  A QM model whose R-free is
    above it by less than the noise of R-free (286 free reflections: ~0.018)
    is handed back; with a large free set, or above the input's R-free, the
    library model is."""
    from qr_phenix.refinement import best_model
    from qr_phenix.refinement.stages import qm_r_free_ceiling

    def stats(cycle, r_free):
        return stats_mod.CycleStats(cycle=cycle, r_work=r_free - 0.05, r_free=r_free,
                                    bond_rmsd=0.01, angle_rmsd=1.0, clashscore=1.0)
    library, qm = stats(0, 0.3066), [stats(1, 0.3107), stats(2, 0.3112)]

    def handed_back(input_r_free, n_free):
        limits = Limits(bond_rmsd=0.028, angle_rmsd=4.0, gap=0.06, n_free=n_free)
        ceiling = qm_r_free_ceiling(input_r_free, library.r_free, limits)
        return best_model.choose(library, qm, limits, r_free_ceiling=ceiling)[0]
    assert handed_back(0.3138, 286) == 2          # fewest clashes tie: the latest
    assert handed_back(0.3138, 20000) == 0        # noise 0.002: the fits differ
    assert handed_back(0.3080, 286) == 0          # worse than the input
    limits = Limits(bond_rmsd=0.028, angle_rmsd=4.0, gap=0.06, n_free=286)
    assert best_model.choose(library, qm, limits)[0] == 0    # without a ceiling


def test_far_start_anneals_the_weight_until_geometry_is_within_limits(helix_model):
    # strong data weights fit far better but distort: anneal from the best trial
    limits = Limits(bond_rmsd=0.015, angle_rmsd=2.0, gap=0.08)
    ref = Scripted(helix_model.deep_copy(), limits, r_free_of=lambda s: 0.40 - 0.1 * s,
                   bond_of=lambda s: 0.1 * s, weight_trials=[0.25, 0.5, 1, 2],
                   anneal="auto", weight_search="first", macro_cycles=6)
    result = ref.run()
    weights = [c.weight for c in result.cycles]
    assert weights[:5] == [2, 1, 0.5, 0.25, 0.125]
    assert "annealing from scale 2" in result.cycles[0].note
    assert "annealing done" in result.cycles[4].note
    # the same run without annealing keeps the weight of the trials
    off = Scripted(helix_model.deep_copy(), limits, r_free_of=lambda s: 0.40 - 0.1 * s,
                   bond_of=lambda s: 0.1 * s, weight_trials=[0.25, 0.5, 1, 2],
                   anneal="off", weight_search="first", macro_cycles=2)
    assert off.run().cycles[0].weight == 0.125


def test_qm_does_not_anneal_from_a_trial_that_broke_a_bond(helix_model):
    # a QM energy does not mend a broken bond: the strong-data trial that broke
    # one is no start for annealing, however much lower its R-free
    class BreaksAtTwo(Scripted):
        def broken_bonds(self):
            return ["CA - C d=1.97 A (ideal 1.52)"] if (self.scale or 0) >= 2 else []
    limits = Limits(bond_rmsd=0.015, angle_rmsd=2.0, gap=0.08)
    settings = dict(r_free_of=lambda s: 0.40 - 0.1 * s, bond_of=lambda s: 0.012 * s,
                    weight_trials=[0.25, 0.5, 1, 2], anneal="auto", weight_search="first",
                    macro_cycles=2)
    for kind, first_weight in ((Scripted, 2), (BreaksAtTwo, 1)):
        ref = kind(helix_model.deep_copy(), limits, **settings)
        ref.quantum = True
        result = ref.run()
        assert result.cycles[0].weight == first_weight, kind.__name__
        assert [t.broken_bonds for t in result.trials] == \
            [0, 0, 0, int(kind is BreaksAtTwo)]


def test_gap_limit_allows_the_noise_of_a_small_free_set():
    limits = Limits(bond_rmsd=0.015, angle_rmsd=2.0, gap=0.05, n_free=21)
    assert limits.gap_allowed(0.20) == pytest.approx(2 * 0.20 / 21 ** 0.5)
    assert limits.gap_ok(0.11, 0.18) and not limits.gap_ok(0.05, 0.20)
    big = Limits(bond_rmsd=0.015, angle_rmsd=2.0, gap=0.05, n_free=2000)
    assert big.gap_allowed(0.20) == 0.05
    # r_free_r_work_gap_max set by the user: that gap, whatever the free set
    fixed = Limits(bond_rmsd=0.015, angle_rmsd=2.0, gap=0.05, n_free=21, gap_fixed=True)
    assert fixed.gap_allowed(0.20) == 0.05 and not fixed.gap_ok(0.11, 0.18)


# -- real data ------------------------------------------------------------------

def refine(*args):
    return run_checked(Program, [str(a) for a in args], logger=null_out())


def entry_file(name):
    return shared(ENTRIES / name)


@pytest.fixture(scope="module")
def va7_runs(tmp_path_factory):
    """1va7 (2.9 A, deposited model without H), one macro-cycle, fixed weight."""
    pdb, mtz = entry_file("1va7.pdb"), entry_file("1va7.mtz")
    out = tmp_path_factory.mktemp("va7")
    common = [pdb, mtz, "qm_restraints.restraints=cctbx", "refinement.macro_cycles=1",
              "refinement.weight=0.03", "refinement.validation=off"]
    runs = {}
    for name, extra in (("adp", ["refinement.adp=individual"]),
                        ("group", ["refinement.adp=group"]),
                        ("fixed_b", ["refinement.adp=none"]),
                        ("no_solvent", ["refinement.adp=none", "refinement.bulk_solvent=False"])):
        runs[name] = refine(*(common + extra + ["output.prefix=%s" % (out / name)]))
    return runs


def test_b_refinement_lowers_r_on_a_real_entry(va7_runs):
    # the refined cycle, whichever model the never-worse rule hands back
    adp, group, fixed = (va7_runs[k]["cycles"][-1] for k in ("adp", "group", "fixed_b"))
    assert va7_runs["adp"]["adp"] == "individual" and va7_runs["fixed_b"]["adp"] == "none"
    assert adp["r_free"] < fixed["r_free"] - 0.01
    assert adp["r_work"] < fixed["r_work"] - 0.01
    assert group["r_free"] < fixed["r_free"]
    assert adp["mean_b"] != pytest.approx(fixed["mean_b"])
    assert va7_runs["adp"]["final"]["r_free"] < va7_runs["adp"]["start"]["r_free"]


def test_bulk_solvent_off_keeps_k_mask_zero(va7_runs):
    assert va7_runs["fixed_b"]["data"]["k_mask_max"] > 0.05
    assert va7_runs["no_solvent"]["data"]["k_mask_max"] == 0.0
    assert va7_runs["no_solvent"]["start"]["r_free"] != pytest.approx(
        va7_runs["fixed_b"]["start"]["r_free"], abs=1e-4)


def anisotropic_copy(pdb, path):
    """The model with an ANISOU record for every atom: U elongated 2:1:1 along
    x, with the atom's own B as the equivalent isotropic B."""
    import math
    lines = []
    for line in open(pdb):
        lines.append(line)
        if line.startswith(("ATOM", "HETATM")):
            u_eq = float(line[60:66]) / (8 * math.pi ** 2)
            u11, u22 = 1.5 * u_eq, 0.75 * u_eq     # mean of 1.5, 0.75, 0.75 = 1
            lines.append("ANISOU" + line[6:28] + "%7d%7d%7d%7d%7d%7d" % (
                round(u11 * 1e4), round(u22 * 1e4), round(u22 * 1e4), 0, 0, 0) + line[70:])
    path.write_text("".join(lines))
    return str(path)


def test_anisotropic_input_scores_as_given_and_a_start_handed_back_keeps_anisou(
        helix_pdb, helix_mtz, tmp_path):
    """ANISOU records: the start is scored as given (scales fitted to the
    anisotropic model, not left stale when B refinement converts them to
    isotropic); when no refined model is better, the start handed back keeps
    its ANISOU."""
    import iotbx.pdb
    aniso_pdb = anisotropic_copy(helix_pdb, tmp_path / "aniso.pdb")
    common = [helix_mtz, "qm_restraints.restraints=cctbx", "refinement.macro_cycles=1",
              "refinement.adp=individual", "refinement.validation=off"]
    iso = refine(helix_pdb, *common, "refinement.weight=0.5", "output.prefix=%s" % (tmp_path / "i"))
    r = refine(aniso_pdb, *common, "refinement.weight=0.5", "output.prefix=%s" % (tmp_path / "a"))
    # data computed from the isotropic helix: the elongated U fit them worse,
    # by a little (scales refitted), not by the mismatch of stale scales
    assert iso["start"]["r_free"] < r["start"]["r_free"] < iso["start"]["r_free"] + 0.05
    log = open(r["outputs"]["log"]).read()
    assert "94 anisotropic ADPs (ANISOU) converted to isotropic B" in log
    # a data weight that breaks the geometry: the start is handed back as given
    broken = refine(aniso_pdb, *common, "refinement.weight=500",
                    "output.prefix=%s" % (tmp_path / "b"))
    assert broken["selected_cycle"] == 0
    given = iotbx.pdb.input(aniso_pdb).atoms()
    back = iotbx.pdb.input(broken["outputs"]["pdb"]).atoms()
    assert np.allclose(list(back.extract_uij()), list(given.extract_uij()), atol=1e-4)
    assert np.allclose(list(back.extract_xyz()), list(given.extract_xyz()), atol=1e-3)


def test_twinned_data_keep_their_twin_law(helix_pdb, helix_mtz, tmp_path):
    r = refine(helix_pdb, helix_mtz, "qm_restraints.restraints=cctbx",
               "data_manager.fmodel.xray_data.twin_law=h,-k,-l", "refinement.macro_cycles=1",
               "refinement.weight=0.5", "refinement.adp=none", "refinement.validation=off",
               "output.prefix=%s" % (tmp_path / "twin"))
    assert r["data"]["twin_law"] == "h,-k,-l"
    plain = refine(helix_pdb, helix_mtz, "qm_restraints.restraints=cctbx",
                   "refinement.macro_cycles=1", "refinement.weight=0.5", "refinement.adp=none",
                   "refinement.validation=off", "output.prefix=%s" % (tmp_path / "plain"))
    assert plain["data"]["twin_law"] is None
    assert r["start"]["r_free"] != pytest.approx(plain["start"]["r_free"], abs=1e-4)


def test_weight_search_and_validation_options_have_an_effect(helix_pdb, helix_mtz, tmp_path):
    from qr_phenix.benchmark.perturb import Perturber
    text, _ = Perturber(helix_pdb).run(0.3, 2)
    start = tmp_path / "start.pdb"
    start.write_text(text)
    common = [start, helix_mtz, "qm_restraints.restraints=cctbx", "refinement.macro_cycles=3",
              "refinement.adp=none", "refinement.bulk_solvent=False",
              "refinement.shift_tolerance=-1"]
    every = refine(*(common + ["refinement.weight_search=every", "refinement.validation=cycles",
                               "output.prefix=%s" % (tmp_path / "every")]))
    first = refine(*(common + ["refinement.weight_search=first", "refinement.validation=ends",
                               "output.prefix=%s" % (tmp_path / "first")]))
    off = refine(*(common + ["refinement.weight=0.5", "refinement.validation=off",
                             "output.prefix=%s" % (tmp_path / "off")]))
    assert len(every["weight"]["trials"]) >= len(first["weight"]["trials"]) + 6
    assert all(c["clashscore"] is not None for c in every["cycles"])
    assert first["start"]["clashscore"] is not None and first["final"]["clashscore"] is not None
    assert first["final"]["hbonds"]["n"] > 0
    assert all(c["clashscore"] is None for c in first["cycles"][:-1]) or \
        first["selected_cycle"] != len(first["cycles"])
    assert off["start"]["clashscore"] is None and off["final"]["clashscore"] is None
    assert off["weight"]["trials"] == []


def test_a_broken_bond_stops_a_quantum_run_and_is_never_handed_back(helix_model):
    model = helix_model.deep_copy()
    limits = Limits(bond_rmsd=0.5, angle_rmsd=90.0, gap=0.5)

    class Breaking(Scripted):
        n = 0

        def minimise(self, scale):
            super().minimise(scale)
            self.n += 1
            if self.n == 3:    # third cycle: pull one carbonyl O off its C
                sites = np.array(self.get_sites())
                o = [a.i_seq for a in self.model.get_hierarchy().atoms()
                     if a.name.strip() == "O"][2]
                sites[o] += (1.5, 0, 0)
                self.model.set_sites_cart(driver_flex(sites))

    ref = Breaking(model, limits, r_free_of=lambda s: 0.21 - 0.01 * Breaking.n,
                   bond_of=lambda s: 0.005, macro_cycles=6)
    ref.quantum = True
    result = ref.run(fixed_scale=1.0)
    assert len(result.cycles) == 3 and result.cycles[-1].broken_bonds >= 1
    assert "covalent bonds broke or formed in cycle 3" in result.stopped
    assert " O " in result.stopped and "GLY" in result.stopped
    assert result.selected == 2


def test_charged_peptide_keeps_its_bonds_under_whole_model_qm(tmp_path):
    """Geometry-only GFN2 of a zwitterionic peptide (NH3+ ... COO-, Glu-, Lys+):
    implicit water by default keeps every covalent bond."""
    from paths import TEST_DATA
    from qr_phenix.programs.prepare import Program as Prepare
    pytest.importorskip("pdbfixer", reason="requires pdbfixer (pip install pdbfixer openmm)")
    prepared = tmp_path / "peptide_h.pdb"
    run_checked(Prepare, [str(TEST_DATA / "1us0_A26_35.pdb"),
                          "output.file_name=%s" % prepared], logger=null_out())
    r = refine(prepared, "refinement.macro_cycles=2", "refinement.validation=off",
               "output.prefix=%s" % (tmp_path / "geo"))
    assert r["mode"] == "geometry" and r["stopped"] == ""
    assert r["final"]["bond_rmsd"] < 0.03
    assert r["final"]["broken_bonds"] == 0


def test_solvent_auto_means_water_where_the_engine_has_it():
    from libtbx import Auto
    from qr_phenix.engines.settings import resolve_solvent
    assert resolve_solvent("gfn2", Auto) == "water"
    assert resolve_solvent("pm7", "auto") == "water"
    assert resolve_solvent("hf", Auto) is None
    assert resolve_solvent("gfn2", None) is None
    assert resolve_solvent("gfn2", "alpb:toluene") == "alpb:toluene"

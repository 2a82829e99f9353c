"""qr.refine end to end: X-ray and real space on the 1us0 helix, resume, and
the messages users get for bad input.  Real cctbx, real GFN2-xTB."""

import io
import json
import os

import numpy as np
import pytest
import iotbx.mrcfile
import iotbx.mtz
import iotbx.pdb
from libtbx.utils import Sorry, null_out
from scitbx.array_family import flex

from qr_phenix.command_line import run_checked
from qr_phenix.programs.refine import Program
from qr_phenix.benchmark.metrics import Scorer
from qr_phenix.benchmark.perturb import Perturber

pytest.importorskip("tblite", reason="engine gfn2 needs tblite (pip install tblite)")

START_DOSE, START_SEED = 0.6, 1


def refine(*args):
    return run_checked(Program, [str(a) for a in args], logger=null_out())


@pytest.fixture(scope="module")
def start_pdb(helix_pdb, tmp_path_factory):
    """The helix perturbed by library-restraints MD at 1000 K to a mean shift
    of 0.6 A (fixed seed): H-bonds broken, as in the 1us0 study."""
    text, info = Perturber(helix_pdb).run(START_DOSE, START_SEED)
    assert info.reached and info.mean_shift >= START_DOSE
    path = tmp_path_factory.mktemp("start") / "start.pdb"
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def xray_runs(start_pdb, helix_mtz, tmp_path_factory):
    out = tmp_path_factory.mktemp("xray")
    results = {}
    for restraints in ("cctbx", "qm"):
        results[restraints] = refine(
            start_pdb, helix_mtz, "qm_restraints.restraints=%s" % restraints,
            "refinement.bulk_solvent=False", "refinement.adp=none",
            "output.prefix=%s" % (out / restraints))
    return results


def test_xray_refinement_recovers_hydrogen_bonds(xray_runs, helix_pdb, start_pdb):
    # QM vs library over many starts is the 1us0 benchmark's question
    # (docs/benchmark_1us0.md); on this one start both reach the noise floor
    qm, lib = xray_runs["qm"], xray_runs["cctbx"]
    score = Scorer(helix_pdb)
    start = score(start_pdb)["hbonds"]
    for run in (qm, lib):
        assert run["final"]["r_work"] <= 0.06
        assert run["final"]["r_free"] <= 0.09
        assert score(run["outputs"]["pdb"])["hbonds"] >= start + 3, (start, run["restraints"])


def test_outputs_json_log_and_cif_are_consistent(xray_runs):
    qm = xray_runs["qm"]
    for key in ("pdb", "cif", "log"):
        assert os.path.getsize(qm["outputs"][key]) > 0
    with open(qm["outputs"]["pdb"][:-4] + ".json") as f:
        saved = json.load(f)
    assert saved["final"] == qm["final"]
    assert saved["engine"]["name"] == "gfn2"
    assert saved["engine"]["calls"] == sum(c["engine_calls"] for c in saved["cycles"]) + \
        saved["start"]["engine_calls"]
    assert 0 < saved["engine"]["seconds"] < saved["wall_seconds"]
    log = open(qm["outputs"]["log"]).read()
    assert "Weight trials" in log and "chosen:" in log
    # each QM trial is a QM minimisation: qm_trial_iterations (10), not the
    # cycles' max_iterations (25) that the library's trials keep
    assert "Weight trials (same start, 10 iterations each)" in log
    library_log = open(xray_runs["cctbx"]["outputs"]["log"]).read()
    assert "Weight trials (same start, 25 iterations each)" in library_log
    # one line per cycle with R-work, R-free, geometry, energy, weight
    for c in saved["cycles"]:
        assert ("%.4f  %.4f" % (c["r_work"], c["r_free"])) in log
    cif = iotbx.pdb.input(qm["outputs"]["cif"]).construct_hierarchy()
    pdb = iotbx.pdb.input(qm["outputs"]["pdb"]).construct_hierarchy()
    assert np.allclose(np.array(cif.atoms().extract_xyz()),
                       np.array(pdb.atoms().extract_xyz()), atol=1e-3)
    assert not os.path.exists(qm["outputs"]["pdb"][:-4] + ".checkpoint.json")


def test_library_refinement_reports_no_engine(xray_runs):
    lib = xray_runs["cctbx"]
    assert lib["engine"]["name"] is None and lib["engine"]["calls"] == 0
    assert lib["final"]["r_free"] < lib["start"]["r_free"]


def write_map(pdb_path, map_path, d_min=4.0, shift=(0, 0, 0)):
    xrs = iotbx.pdb.input(pdb_path).xray_structure_simple()
    xrs.scattering_type_registry(table="electron")
    fft = xrs.structure_factors(d_min=d_min).f_calc().fft_map(resolution_factor=0.25)
    fft.apply_sigma_scaling()
    iotbx.mrcfile.write_ccp4_map(
        file_name=str(map_path), unit_cell=xrs.unit_cell(), space_group=xrs.space_group(),
        map_data=fft.real_map_unpadded().as_double(), labels=flex.std_string(["test"]))


def test_real_space_refinement_improves_cc_without_new_clashes(start_pdb, helix_pdb, tmp_path):
    map_path = tmp_path / "reference_4A.mrc"
    write_map(helix_pdb, map_path)
    lib = refine(start_pdb, map_path, "refinement.resolution=4", "refinement.macro_cycles=4",
                 "qm_restraints.restraints=cctbx", "output.prefix=%s" % (tmp_path / "lib"))
    assert lib["mode"] == "real_space"
    assert lib["final"]["map_cc"] > lib["start"]["map_cc"] + 0.02
    assert lib["final"]["bond_rmsd"] < 0.02
    assert lib["final"]["clashscore"] <= lib["start"]["clashscore"]
    # GFN2 in vacuum packs O(i)...C(i+1) of this helix to 2.5-2.7 A, which
    # probe2 counts as clashes at every map weight: the start is handed back
    qm = refine(start_pdb, map_path, "refinement.resolution=4", "refinement.macro_cycles=1",
                "refinement.weight_trials=0.125 0.25",
                "output.prefix=%s" % (tmp_path / "qm"))
    assert qm["final"]["clashscore"] <= qm["start"]["clashscore"]
    assert qm["final"]["map_cc"] >= qm["start"]["map_cc"]
    assert any(t["clashscore"] is not None for t in qm["weight"]["trials"])


def test_geometry_only_minimisation(start_pdb, tmp_path):
    r = refine(start_pdb, "qm_restraints.restraints=cctbx", "refinement.macro_cycles=2",
               "output.prefix=%s" % (tmp_path / "geo"))
    assert r["mode"] == "geometry"
    assert r["final"]["bond_rmsd"] < r["start"]["bond_rmsd"]


def test_resume_after_a_crash_continues_from_the_checkpoint(start_pdb, helix_mtz, tmp_path,
                                                            monkeypatch):
    from qr_phenix.refinement import xray
    prefix = tmp_path / "crash"
    args = (start_pdb, helix_mtz, "qm_restraints.restraints=cctbx", "refinement.weight=0.5",
            "refinement.macro_cycles=4", "refinement.r_tolerance=0",
            "refinement.shift_tolerance=0", "output.prefix=%s" % prefix)
    original = xray.XrayRefinement.minimise
    calls = {"n": 0}

    def crash_in_cycle_3(self, scale):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Sorry("engine crashed (simulated)")
        return original(self, scale)

    monkeypatch.setattr(xray.XrayRefinement, "minimise", crash_in_cycle_3)
    with pytest.raises(Sorry, match="simulated"):
        refine(*args)
    checkpoint = json.load(open(str(prefix) + ".checkpoint.json"))
    assert len(checkpoint["cycles"]) == 2
    assert not os.path.exists(str(prefix) + ".pdb")
    assert "resume=True" in open(str(prefix) + ".log").read()
    monkeypatch.setattr(xray.XrayRefinement, "minimise", original)
    r = refine(*args, "output.resume=True")
    assert [c["cycle"] for c in r["cycles"]] == [1, 2, 3, 4]
    assert r["cycles"][:2] == checkpoint["cycles"]
    log = open(str(prefix) + ".log").read()
    assert "Resuming after cycle 2" in log


# --- bad input: one Sorry each, naming the problem and the fix -------------

def test_unreadable_reflection_file(start_pdb, tmp_path):
    bad = tmp_path / "broken.mtz"
    bad.write_bytes(b"this is not an MTZ file\n" * 10)
    with pytest.raises(Sorry, match="Cannot read .*broken.mtz"):
        refine(start_pdb, bad, "output.prefix=%s" % (tmp_path / "x"))


def _write_mtz(arrays, path):
    ds = arrays[0][0].as_mtz_dataset(column_root_label=arrays[0][1])
    for a, label in arrays[1:]:
        ds.add_miller_array(a, column_root_label=label)
    ds.mtz_object().write(str(path))


def _helix_arrays(helix_mtz):
    mtz = iotbx.mtz.object(helix_mtz)
    arrays = {a.info().label_string(): a for a in mtz.as_miller_arrays()}
    f = [a for k, a in arrays.items() if "FMODEL" in k][0]
    flags = [a for k, a in arrays.items() if "free" in k.lower()][0]
    return f, flags


def test_missing_free_flags(start_pdb, helix_mtz, tmp_path):
    f, _ = _helix_arrays(helix_mtz)
    path = tmp_path / "noflags.mtz"
    _write_mtz([(f, "FOBS")], path)
    with pytest.raises(Sorry, match="r_free_flags.generate=True"):
        refine(start_pdb, path, "output.prefix=%s" % (tmp_path / "x"))


def test_all_reflections_flagged_free(start_pdb, helix_mtz, tmp_path):
    f, flags = _helix_arrays(helix_mtz)
    all_free = flags.customized_copy(data=flex.int(flags.size(), 1))
    path = tmp_path / "allfree.mtz"
    _write_mtz([(f, "FOBS"), (all_free, "R-free-flags")], path)
    with pytest.raises(Sorry, match="(?i)R-free flags"):
        refine(start_pdb, path, "output.prefix=%s" % (tmp_path / "x"))


def test_missing_hydrogens_for_qm(helix_no_ha_pdb, helix_mtz, tmp_path):
    with pytest.raises(Sorry, match=r"lack some.*qr_phenix.prepare"):
        refine(helix_no_ha_pdb, helix_mtz, "output.prefix=%s" % (tmp_path / "x"))


def test_ambiguous_data_labels_list_the_choices(start_pdb, helix_mtz, tmp_path):
    f, flags = _helix_arrays(helix_mtz)
    path = tmp_path / "two.mtz"
    _write_mtz([(f, "FOBS"), (flags, "R-free-flags"), (f, "FOTHER")], path)
    with pytest.raises(Sorry, match=r"FOBS, R-free-flags, FOTHER.*miller_array.labels.name"):
        refine(start_pdb, path, "qm_restraints.restraints=cctbx",
               "output.prefix=%s" % (tmp_path / "x"))
    r = refine(start_pdb, path, "qm_restraints.restraints=cctbx", "refinement.macro_cycles=1",
               "miller_array.labels.name=FOBS", "output.prefix=%s" % (tmp_path / "x"))
    assert r["final"]["r_free"] < r["start"]["r_free"]


def _shifted(pdb_path, shift, path):
    h = iotbx.pdb.input(pdb_path)
    hierarchy = h.construct_hierarchy()
    hierarchy.atoms().set_xyz(hierarchy.atoms().extract_xyz() + shift)
    path.write_text(hierarchy.as_pdb_string(crystal_symmetry=h.crystal_symmetry()))
    return path


def test_model_far_outside_the_cell(start_pdb, helix_mtz, tmp_path):
    path = _shifted(start_pdb, (500.0, 0, 0), tmp_path / "far.pdb")
    with pytest.raises(Sorry, match="unit cells away"):
        refine(path, helix_mtz, "qm_restraints.restraints=cctbx",
               "output.prefix=%s" % (tmp_path / "x"))


def test_map_model_mismatch(start_pdb, helix_pdb, tmp_path):
    map_path = tmp_path / "m.mrc"
    write_map(helix_pdb, map_path)
    path = _shifted(start_pdb, (60.0, 0, 0), tmp_path / "moved.pdb")
    with pytest.raises(Sorry, match="(?i)map"):
        refine(path, map_path, "refinement.resolution=4", "qm_restraints.restraints=cctbx",
               "output.prefix=%s" % (tmp_path / "x"))


def test_map_without_resolution(start_pdb, helix_pdb, tmp_path):
    map_path = tmp_path / "m.mrc"
    write_map(helix_pdb, map_path)
    with pytest.raises(Sorry, match="refinement.resolution"):
        refine(start_pdb, map_path, "output.prefix=%s" % (tmp_path / "x"))


def test_existing_outputs_are_not_overwritten(start_pdb, tmp_path):
    prefix = tmp_path / "done"
    (tmp_path / "done.pdb").write_text("")
    with pytest.raises(Sorry, match="overwrite=True"):
        refine(start_pdb, "qm_restraints.restraints=cctbx", "output.prefix=%s" % prefix)


def test_unknown_parameter_is_refused(start_pdb, tmp_path):
    with pytest.raises(Sorry):
        refine(start_pdb, "refinement.macro_cylces=3", "output.prefix=%s" % (tmp_path / "x"))


def _scripted_refinement(model, limits, r_work=0.20, r_free=0.22, validator=None):
    """A MacroCycleRefinement whose minimiser moves nothing and whose R factors
    are given: only the driver's weight rules act."""
    from types import SimpleNamespace
    from qr_phenix.refinement import statistics as stats_mod
    from qr_phenix.refinement.driver import MacroCycleRefinement

    class Scripted(MacroCycleRefinement):
        def minimise(self, scale):
            pass

        def measure(self, cycle):
            return stats_mod.CycleStats(cycle=cycle, r_work=r_work, r_free=r_free)

    params = SimpleNamespace(macro_cycles=8, max_iterations=1, weight_trials=[1.0],
                             r_tolerance=-1.0, shift_tolerance=-1.0, anneal="off",
                             weight_search="first")
    return Scripted(model, params, limits, quantum=False, log=null_out(), validator=validator)


def test_driver_doubles_data_weight_when_geometry_is_well_inside_limits(helix_pdb):
    from qr_phenix.monomer_library import process_model
    from qr_phenix.refinement import driver
    from qr_phenix.refinement.weights import Limits
    model = process_model(helix_pdb)
    bonds, _ = driver.stats_mod.HeavyAtomGeometry(model)(model.get_sites_cart())
    # geometry far inside the limits and a sane gap: data x2, at most MAX_RAISE_STEPS times
    loose = Limits(bond_rmsd=bonds / 0.3, angle_rmsd=90.0, gap=0.05)
    result = _scripted_refinement(model, loose).run()
    weights = [c.weight for c in result.cycles]
    assert weights[:driver.MAX_RAISE_STEPS + 2] == [1, 2, 4, 8, 8][:driver.MAX_RAISE_STEPS + 2]
    assert result.raise_steps == driver.MAX_RAISE_STEPS

    # ...but not when the cycle made new clashes (the start's clashscore is the limit)
    def clashes(model, stats):
        stats.clashscore = 2.0 if stats.cycle == 0 else 5.0
    result = _scripted_refinement(model, loose, validator=clashes).run()
    assert [c.weight for c in result.cycles][:3] == [1, 1, 1]
    assert result.raise_steps == 0
    # a gap over the limit is over-fitting: never data x2, but restraints x2
    # (at most MAX_SAFETY_STEPS times), as for geometry over the limit
    result = _scripted_refinement(model, loose, r_free=0.30).run()
    assert [c.weight for c in result.cycles][:4] == [1, 0.5, 0.25, 0.25]
    assert result.raise_steps == 0
    # bonds over the limit: restraints x2, at most MAX_SAFETY_STEPS times
    tight = Limits(bond_rmsd=bonds / 2, angle_rmsd=90.0, gap=0.05)
    result = _scripted_refinement(model, tight).run()
    assert [c.weight for c in result.cycles][:4] == [1, 0.5, 0.25, 0.25]
    assert result.safety_steps == driver.MAX_SAFETY_STEPS


def test_restraints_x2_goes_on_past_the_safety_steps_while_geometry_comes_closer(helix_pdb):
    """A model whose bonds each cycle move a fifth of the way back to ideal
    (as when stronger restraints work): restraints x2 continues past
    MAX_SAFETY_STEPS while the bonds come closer to the limit, up to
    MAX_GEOMETRY_STEPS; geometry that does not move stops at MAX_SAFETY_STEPS
    (test above)."""
    import numpy as np
    from scitbx.array_family import flex
    from qr_phenix.monomer_library import process_model
    from qr_phenix.refinement import driver
    from qr_phenix.refinement.weights import Limits
    model = process_model(helix_pdb)
    ideal = np.array(model.get_sites_cart())
    geometry = driver.stats_mod.HeavyAtomGeometry(model)
    distorted = ideal + np.random.default_rng(0).normal(0, 0.05, ideal.shape)
    model.set_sites_cart(flex.vec3_double(distorted))
    bonds_start, _ = geometry(model.get_sites_cart())
    refinement = _scripted_refinement(model, Limits(bond_rmsd=bonds_start / 4, angle_rmsd=90.0,
                                                    gap=0.05))

    def minimise(scale):
        sites = np.array(refinement.model.get_sites_cart())
        refinement.model.set_sites_cart(flex.vec3_double(ideal + 0.8 * (sites - ideal)))
    refinement.minimise = minimise
    result = refinement.run()
    weights = [c.weight for c in result.cycles]
    assert result.safety_steps == driver.MAX_GEOMETRY_STEPS > driver.MAX_SAFETY_STEPS
    assert weights[:driver.MAX_GEOMETRY_STEPS + 2] == [
        2.0 ** -k for k in range(driver.MAX_GEOMETRY_STEPS + 1)] + [2.0 ** -driver.MAX_GEOMETRY_STEPS]
    bonds = [c.bond_rmsd for c in result.cycles]
    assert all(b > bonds_start / 4 for b in bonds[:driver.MAX_GEOMETRY_STEPS])


def test_data_weight_is_never_raised_back_to_a_weight_that_over_fitted(helix_pdb):
    """Geometry well inside the limits asks for data x2, but the weight that
    over-fitted once (gap over the limit at scale 2) is not tried again."""
    from types import SimpleNamespace
    from qr_phenix.monomer_library import process_model
    from qr_phenix.refinement import driver
    from qr_phenix.refinement import statistics as stats_mod
    from qr_phenix.refinement.weights import Limits
    model = process_model(helix_pdb)
    bonds, _ = driver.stats_mod.HeavyAtomGeometry(model)(model.get_sites_cart())

    class OverFitsAtTwo(driver.MacroCycleRefinement):
        scale = None

        def minimise(self, scale):
            self.scale = scale

        def measure(self, cycle):
            gap = 0.10 if (self.scale or 0) >= 2 else 0.02
            return stats_mod.CycleStats(cycle=cycle, r_work=0.25 - gap, r_free=0.25)

    params = SimpleNamespace(macro_cycles=6, max_iterations=1, weight_trials=[1.0],
                             r_tolerance=-1.0, shift_tolerance=-1.0, anneal="off",
                             weight_search="first")
    loose = Limits(bond_rmsd=bonds / 0.3, angle_rmsd=90.0, gap=0.05)
    result = OverFitsAtTwo(model, params, loose, quantum=False, log=null_out()).run()
    weights = [c.weight for c in result.cycles]
    # without the rule: 1, 2, 1, 2, 1, 2 (data x2 and restraints x2 taking turns)
    assert weights == [1, 2, 1, 1, 1, 1]
    assert result.over_fitting_scale == 2


def test_trials_shorter_than_the_cycles_mark_any_gap_over_the_limit(helix_pdb):
    """A weight whose trial gap is over the limit by less than the noise is
    tried again by data x2 when the trials are as long as the cycles, and
    not when they are shorter (QM trials: their gap grows with iterations)."""
    from types import SimpleNamespace
    from qr_phenix.monomer_library import process_model
    from qr_phenix.refinement import driver
    from qr_phenix.refinement import statistics as stats_mod
    from qr_phenix.refinement.weights import Limits
    model = process_model(helix_pdb)
    bonds, _ = driver.stats_mod.HeavyAtomGeometry(model)(model.get_sites_cart())
    just_over = 0.05 + driver.GAP_STEP_MIN / 2

    class JustOverAtTwo(driver.MacroCycleRefinement):
        scale = None      # the weight the model in hand was refined with

        def minimise(self, scale):
            self.scale = scale

        def get_state(self):
            return dict(super().get_state(), scale=self.scale)

        def set_state(self, state):
            super().set_state(state)
            self.scale = state["scale"]

        def measure(self, cycle):
            gap = just_over if (self.scale or 0) >= 2 else 0.02
            return stats_mod.CycleStats(cycle=cycle, r_work=0.25 - gap, r_free=0.25)

    def weights(quantum):
        params = SimpleNamespace(macro_cycles=3, max_iterations=2, qm_trial_iterations=1,
                                 qm_local_iterations=0, weight_trials=[1.0, 2.0],
                                 r_tolerance=-1.0, shift_tolerance=-1.0, anneal="off",
                                 weight_search="first")
        loose = Limits(bond_rmsd=bonds / 0.3, angle_rmsd=90.0, gap=0.05, gap_fixed=True)
        run = JustOverAtTwo(model, params, loose, quantum=quantum, log=null_out())
        assert (run.trial_iterations < run.cycle_iterations) == quantum
        return [c.weight for c in run.run().cycles]

    assert weights(quantum=False) == [1, 2, 1]
    assert weights(quantum=True) == [1, 1, 1]


def test_map_cycle_with_new_clashes_restarts_from_best_with_stronger_restraints(helix_pdb):
    """Maps: a cycle whose clashscore rises over the start's is over-fitted:
    restraints x2, and the next cycle starts from the best model so far, not
    from the clashing one."""
    from types import SimpleNamespace
    from qr_phenix.monomer_library import process_model
    from qr_phenix.refinement import driver
    from qr_phenix.refinement import statistics as stats_mod
    from qr_phenix.refinement.weights import Limits
    model = process_model(helix_pdb)
    start_x = model.get_sites_cart()[0][0]

    class ClashingMap(driver.MacroCycleRefinement):
        score = "map_cc"
        starts = []

        def minimise(self, scale):
            self.starts.append(self.model.get_sites_cart()[0][0])
            self.set_sites(self.model.get_sites_cart() + (0.1, 0, 0))

        def measure(self, cycle):
            return stats_mod.CycleStats(cycle=cycle, map_cc=0.90 if cycle == "start" else 0.95)

    def clashes(model, stats):   # every refined model clashes
        stats.clashscore = 2.0 if stats.cycle == 0 else 30.0

    params = SimpleNamespace(macro_cycles=4, max_iterations=1, weight_trials=[1.0],
                             r_tolerance=-1.0, shift_tolerance=-1.0, anneal="off",
                             weight_search="first")
    limits = Limits(bond_rmsd=90.0, angle_rmsd=90.0, gap=0.05)
    log = io.StringIO()
    refinement = ClashingMap(model, params, limits, quantum=False, log=log,
                             validator=clashes)
    refinement.max_extra_trials = 0     # one trial, then the cycles
    result = refinement.run()
    assert limits.max_clashscore == 2.0
    assert [c.weight for c in result.cycles] == [1, 0.5, 0.25, 0.25]
    assert "clashscore over limit: restraints x2" in result.cycles[0].note
    # cycles 2 and 3 start from the start model again (the only one without
    # new clashes); cycle 4 follows cycle 3, the safety steps being spent
    assert ClashingMap.starts == pytest.approx(
        [start_x, start_x, start_x, start_x + 0.1])
    assert "cycle 2 starts from the start model, the best model so far" in log.getvalue()
    assert result.selected == 0


# --- the fast path for QM: library stage, then QM; cost estimate -------------

def test_library_stage_then_qm_resumes_and_never_hands_back_worse(start_pdb, helix_mtz,
                                                                 tmp_path, monkeypatch):
    """refinement.library_stage=True on the helix: library cycles, then QM cycles
    from the library stage's model; a crash in the QM stage resumes there
    without redoing the library stage; the log carries the cost estimate."""
    from qr_phenix.refinement import xray
    prefix = tmp_path / "staged"
    args = (start_pdb, helix_mtz, "refinement.library_stage=True",
            "refinement.macro_cycles=3", "refinement.qm_macro_cycles=2",
            "refinement.qm_weight_trials=0.25 0.5", "refinement.qm_trial_iterations=5",
            "refinement.bulk_solvent=False", "refinement.adp=none",
            "output.prefix=%s" % prefix)
    original = xray.XrayRefinement.minimise
    quantum_minimisations = {"n": 0}

    def crash_in_second_qm_cycle(self, scale):
        if self.quantum:
            quantum_minimisations["n"] += 1
            if quantum_minimisations["n"] == 3:   # 2 trials (cycle 1), then cycle 2
                raise Sorry("engine crashed (simulated)")
        return original(self, scale)

    monkeypatch.setattr(xray.XrayRefinement, "minimise", crash_in_second_qm_cycle)
    with pytest.raises(Sorry, match="simulated"):
        refine(*args)
    library = json.load(open(str(prefix) + ".library.checkpoint.json"))
    assert library["finished"] and 1 <= len(library["result"]["cycles"]) <= 3
    monkeypatch.setattr(xray.XrayRefinement, "minimise", original)
    r = refine(*args, "output.resume=True")
    n_library = r["library_stage"]["cycles"]
    assert n_library == len(library["result"]["cycles"])
    assert len(r["cycles"]) == n_library + 2
    assert all("QM" in c["note"] for c in r["cycles"][n_library:])
    assert 0 < len(r["engine"]["gradient_seconds"]) <= r["engine"]["calls"]
    # two QM trials of 5 iterations: the trial table says so
    assert len([t for t in r["weight"]["trials"] if t["scale"] in (0.25, 0.5)]) >= 2
    assert r["final"]["r_free"] <= r["start"]["r_free"] + 0.002
    log = open(str(prefix) + ".log").read()
    assert "Library stage finished before the interruption" in log
    assert "Weight trials (same start, 5 iterations each)" in log
    assert "estimate for the run" in log and r["cost_estimates"]
    assert r["cost_estimate_earliest_stop_s"] <= r["cost_estimates"][0]["estimated_total_s"] \
        <= r["cost_estimate_all_cycles_s"]
    assert not os.path.exists(str(prefix) + ".library.checkpoint.json")
    assert not os.path.exists(str(prefix) + ".checkpoint.json")


def test_library_stage_auto_is_off_for_small_whole_model_qm(xray_runs):
    assert xray_runs["qm"]["library_stage"] is None
    log = open(xray_runs["qm"]["outputs"]["log"]).read()
    assert "Library stage before QM: no (whole-model QM of a small model)" in log
    assert "Local QM models: no (whole-model QM of a small model" in log


def test_local_models_auto_is_on_in_the_weight_trials_of_fragment_runs_only():
    """qm_local_iterations=Auto: 10 steps per QM gradient when the QM energy
    comes from fragments and GFN-FF's curvature was measured to fit the
    engine's; an explicit value is taken as given."""
    from types import SimpleNamespace
    from libtbx import Auto
    from qr_phenix.refinement import stages
    auto = SimpleNamespace(qm_local_iterations=Auto)
    assert stages.local_iterations(auto, True, True, "gfn2")[0] == stages.AUTO_LOCAL_ITERATIONS
    k, why = stages.local_iterations(auto, True, True, "pm7")
    assert k == 0 and "pm7" in why
    assert stages.local_iterations(auto, True, False, "gfn2")[0] == 0
    assert stages.local_iterations(auto, False, True, "gfn2")[0] == 0
    assert stages.local_iterations(SimpleNamespace(qm_local_iterations=0), True, True,
                                   "gfn2") == (0, "refinement.qm_local_iterations=0")
    assert stages.local_iterations(SimpleNamespace(qm_local_iterations=5), True, False,
                                   "pm7")[0] == 5


def test_cost_reporter_estimate_and_progress_lines():
    """The estimate waits for the fifth gradient and takes the time per
    gradient from the third on (the first is from scratch, the second a
    restart at the same geometry); it is (gradients planned) x (time per
    gradient) + iterations x (time per iteration outside the engine) +
    cycles x (time per cycle outside the minimisations) for the expected
    path, with the earliest stop (no extra trial) and every step as its
    ends; both overheads are measured once a step and a cycle have ended;
    progress lines appear only after the interval; fragment lines only while
    one gradient outlasts it."""
    import io
    from qr_phenix.refinement.progress import CostReporter, Plan, PlannedStep
    now = {"t": 0.0}
    log = io.StringIO()
    rep = CostReporter(log, interval=60.0, overhead_per_iteration=0.1, overhead_per_cycle=3.0,
                       clock=lambda: now["t"])
    # may stop after cycle 2 (stale rule), expected to, with its one extra trial
    rep.plan(Plan([PlannedStep("trial 1", 10, 1), PlannedStep("trial 2", 10, 1, optional=True),
                   PlannedStep("cycle 2 of 3", 20, 2), PlannedStep("cycle 3 of 3", 20, 3)],
                  earliest_stop=2, expected_stop=2, expected_extra_trials=1))
    rep.engine_call(8.0)               # the start model, cold
    now["t"] = 9.0
    rep.begin_cycle(1)
    now["t"] = 10.0
    rep.begin_step("trial 1", 10)
    for t, seconds in ((14.0, 2.0), (20.0, 6.0), (22.0, 5.0)):
        now["t"] = t                  # a restart at the same geometry, then steps
        rep.engine_call(seconds)
    assert not rep.estimates and "estimate for the run" not in log.getvalue()
    now["t"] = 25.0
    rep.engine_call(7.0)
    # 1.1 gradients per iteration before any step is measured: 11 - 4 more in
    # this step, 11 per trial, 22 per cycle, at 6 s (mean of 6, 5, 7); 0.1 s
    # per iteration outside the engine (the step under way has spent none:
    # its engine time exceeds its wall time here); 3 s per cycle, of which
    # cycle 1 has spent 1 s (9-10 s) outside its minimisations
    earliest = 25.0 + (7 + 22) * 6.0 + (10 + 20) * 0.1 + (2.0 + 3.0)
    expected = 25.0 + (7 + 11 + 22) * 6.0 + (10 + 10 + 20) * 0.1 + (2.0 + 3.0)
    every = 25.0 + (7 + 11 + 22 + 22) * 6.0 + (10 + 10 + 20 + 20) * 0.1 + (2.0 + 2 * 3.0)
    assert rep.earliest_estimate == pytest.approx(earliest)
    assert rep.estimates[-1][1] == pytest.approx(expected)
    assert rep.all_cycles_estimate == pytest.approx(every)
    text = log.getvalue()
    assert "First QM gradient: 8.0 s" in text
    assert "QM gradients so far: 8.0 s, 2.0 s, 6.0 s, 5.0 s, 7.0 s; 6.0 s per gradient" \
        " assumed" in text
    assert "Expected: 3 minimisations (40 iterations)" in text
    assert ("estimate for the run: 5 min (4 min from now); at least 3 min (it stops after"
            " cycle 2") in text
    assert "at most 7 min (every cycle and extra trial)" in text
    n_lines = len(text.splitlines())
    now["t"] = 28.0
    rep.engine_call(4.0)
    rep.fragments_done(5, 10)
    assert len(log.getvalue().splitlines()) == n_lines       # nothing before 60 s
    now["t"] = 90.0
    rep.fragments_done(5, 10)           # one gradient running for 62 s
    assert "5 of 10 fragments done" in log.getvalue().splitlines()[-1]
    now["t"] = 150.0
    rep.engine_call(70.0)
    assert "trial 1: 6 QM gradients" in log.getvalue().splitlines()[-1]
    rep.end_step()
    assert rep.calls_per_iteration() == pytest.approx(6 / 10.0)
    # the extra trial runs: it is no longer expected on top
    rep.begin_step("trial 2", 10)
    assert rep.planned.expected_extra_trials == 0
    assert [s.label for s in rep.planned.steps] == ["cycle 2 of 3", "cycle 3 of 3"]
    rep.end_step()
    now["t"] = 160.0
    rep.end_cycle()
    # trial 1: 140 s wall, 94 s in the engine; trial 2 took no time; cycle 1:
    # 151 s, of which 140 s in its minimisations
    assert rep.overhead_per_iteration() == pytest.approx((140.0 - 94.0) / 20)
    assert rep.overhead_per_cycle() == pytest.approx(11.0)
    rep.plan(Plan([PlannedStep("cycle 1 weight trial 4", 10, 1, optional=True),
                   PlannedStep("cycle 2 of 2", 20, 2)]))
    rep.drop_steps("cycle 1 weight trial ")      # the search ended early
    assert [s.label for s in rep.planned.steps] == ["cycle 2 of 2"]


def test_cost_reporter_counts_one_gradient_per_local_model():
    """With k L-BFGS steps per QM gradient a minimisation of n iterations takes
    ceil(n/k) gradients (3kyi, k=10: 1 per 10-iteration trial, 3-4 per
    25-iteration cycle; a ratio per iteration from the trials said 2.5), scaled
    by what the finished steps took against that count where that is more
    (trials that found their start's gradient cached took fewer)."""
    import io
    from qr_phenix.refinement.progress import CostReporter, Plan, PlannedStep
    now = {"t": 0.0}
    rep = CostReporter(io.StringIO(), clock=lambda: now["t"])
    rep.plan(Plan([PlannedStep("cycle 2 of 3", 25, 2, local_iterations=10),
                   PlannedStep("cycle 3 of 3", 25, 3, local_iterations=10)]))
    assert rep.remaining_gradients() == pytest.approx(6)
    rep.begin_step("trial 1", 10, 10)     # the start's gradient was cached: no call
    rep.end_step()
    assert rep.remaining_gradients() == pytest.approx(6)
    rep.begin_step("trial 2", 10, 10)
    rep.engine_call(1.0)
    rep.end_step()
    assert rep.remaining_gradients() == pytest.approx(6)
    rep.begin_step("trial 3", 10, 10)
    for _ in range(4):        # repeated gradients (the force field failed, say)
        rep.engine_call(1.0)
    rep.end_step()
    assert rep.remaining_gradients() == pytest.approx(6 * 5 / 3.0)


def test_cost_reporter_keeps_local_and_exact_steps_apart():
    """qm_local_scope=weight_trials: trials on local models, cycles with a QM
    gradient at every step.  The trials' few gradients and their GFN-FF time
    say nothing about a cycle's: cycles take the guesses (1.1 gradients and
    the library stage's overhead per iteration) until a cycle has run, and
    each kind is then measured on its own steps."""
    import io
    from qr_phenix.refinement.progress import CostReporter, Plan, PlannedStep, \
        CALLS_PER_ITERATION
    now = {"t": 0.0}
    rep = CostReporter(io.StringIO(), overhead_per_iteration=0.01, clock=lambda: now["t"])
    rep.plan(Plan([PlannedStep("cycle 2 of 2", 25, 2)]))
    rep.begin_step("trial 1", 10, 10)
    rep.engine_call(5.0)
    now["t"] = 30.0                       # 25 s of GFN-FF and the data target
    rep.end_step()
    assert rep.calls_per_iteration() == CALLS_PER_ITERATION
    assert rep.overhead_per_iteration(10) == pytest.approx(2.5)
    assert rep.overhead_per_iteration(0) == pytest.approx(0.01)
    assert rep.remaining_gradients() == pytest.approx(25 * CALLS_PER_ITERATION)
    rep.begin_step("cycle 2 of 2", 25)
    for _ in range(27):
        rep.engine_call(1.0)
    now["t"] = 30.0 + 27.0 + 0.5
    rep.end_step()
    assert rep.calls_per_iteration() == pytest.approx(27 / 25.0)
    assert rep.overhead_per_iteration(0) == pytest.approx(0.5 / 25)
    assert rep.overhead_per_iteration(10) == pytest.approx(2.5)
    assert rep.gradients_for(10, 10) == pytest.approx(1.0)


def test_durations_keep_the_digits_that_tell_helix_gradients_apart():
    from qr_phenix.refinement.progress import minutes
    # a 94-atom helix gradient takes 0.1-0.3 s: "0 s" told the user nothing
    assert [minutes(t) for t in (0.137, 0.21, 4.36, 75.0, 600.0, 7200.0)] == \
        ["0.14 s", "0.21 s", "4.4 s", "75 s", "10 min", "2.0 h"]


def test_library_stage_true_without_library_restraints_is_one_sorry():
    from types import SimpleNamespace
    from qr_phenix.refinement import stages
    params = SimpleNamespace(library_stage=True)
    with pytest.raises(Sorry, match="no library restraints.*library_stage=False"):
        stages.use_library_stage(params, quantum=True, uses_data=True, fragments_on=True,
                                 unrestrained=["A LIG 1"])
    on, why = stages.use_library_stage(SimpleNamespace(library_stage=None), True, True, True,
                                       ["A LIG 1"])
    assert not on and "A LIG 1" in why

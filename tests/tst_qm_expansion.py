"""Steps between QM gradients on the QM energy expanded with GFN-FF's curvature
(qr_phenix/qm_expansion.py), with real GFN2-xTB (tblite) and GFN-FF (the xtb
program) on the 1us0 helix and the AVKVA peptide."""

import numpy as np
import pytest
from libtbx.utils import null_out
from scitbx.array_family import flex

from qr_phenix import restraints_manager as rm
from qr_phenix.command_line import run_checked
from qr_phenix.engines import get_engine
from qr_phenix.engines.base import EngineSettings
from qr_phenix.monomer_library import process_model
from qr_phenix.programs.refine import Program

from paths import PEPTIDE_H_PDB


def needs_engine(name):
    ok, why = get_engine(name).available(EngineSettings(name=name))
    if not ok:
        pytest.skip("engine %s not available: %s" % (name, why))


@pytest.fixture(scope="module")
def peptide():
    """AVKVA (77 atoms, charge +1), GFN2 in vacuum over the whole model."""
    needs_engine("gfnff")
    model = process_model(str(PEPTIDE_H_PDB), grm_normalization=False)
    params = rm.phil_scope.extract().qm_restraints
    params.restraints, params.engine, params.engine_options.solvent = "qm", "gfn2", None
    rm.setup_restraints(model, params, log=null_out())
    return model


def test_force_field_has_the_curvature_of_the_qm_energy(peptide):
    # the premise: GFN-FF's second-order change matches GFN2's along moves of
    # every kind (measured 0.94-1.01), where the library's does not (0.044-0.084)
    grm = peptide.get_restraints_manager().geometry
    x0 = np.array(peptide.get_sites_cart())
    grm.expand_at(x0)
    grm.end_expansion()
    shape = grm.local_model.shape
    settings = shape.calculator.settings
    assert settings.name == "gfnff" and settings.charge == 1 and settings.solvent is None
    _, g0 = grm.qm_energy_and_gradient(x0)
    _, f0 = shape.energy_and_gradient(x0)
    rng = np.random.default_rng(0)
    heavy = np.array([s != "H" for s in shape.symbols])
    moves = [rng.normal(0, 0.01, x0.shape), -g0 / np.abs(g0).max() * 0.02]
    block = np.zeros_like(x0)
    block[heavy] = rng.normal(0, 0.01, (heavy.sum(), 3))
    moves.append(block)
    for s in moves:
        _, g1 = grm.qm_energy_and_gradient(x0 + s)
        _, f1 = shape.energy_and_gradient(x0 + s)
        ratio = np.vdot(g1 - g0, s) / np.vdot(f1 - f0, s)
        assert 0.8 < ratio < 1.25, ratio


def test_local_model_is_the_qm_energy_at_its_point_and_consistent_around_it(peptide):
    grm = peptide.get_restraints_manager().geometry
    x0 = np.array(peptide.get_sites_cart())
    e_qm, g_qm = grm.qm_energy_and_gradient(x0)
    calls = grm.n_engine_calls
    grm.expand_at(x0)
    try:
        e, g = grm.qm_energy_and_gradient(x0)
        assert e == pytest.approx(e_qm, abs=1e-6) and np.abs(g - g_qm).max() < 1e-6
        # away from x0: no QM call, and the gradient is that of the energy
        x = x0 + np.random.default_rng(1).normal(0, 0.02, x0.shape)
        e1, g1 = grm.qm_energy_and_gradient(x)
        d = np.random.default_rng(2).normal(0, 1, x0.shape)
        d /= np.linalg.norm(d)
        h = 1e-4
        fd = (grm.qm_energy_and_gradient(x + h * d)[0]
              - grm.qm_energy_and_gradient(x - h * d)[0]) / (2 * h)
        assert fd == pytest.approx(np.vdot(g1, d), rel=1e-4, abs=1e-4)
        # an atom moved beyond the trust radius meets a wall, with its gradient
        from qr_phenix.qm_expansion import TRUST_RADIUS
        far = x.copy()
        far[0] += [TRUST_RADIUS + 0.2, 0, 0]
        step = np.zeros_like(x)
        step[0, 0] = h
        fd = (grm.qm_energy_and_gradient(far + step)[0]
              - grm.qm_energy_and_gradient(far - step)[0]) / (2 * h)
        _, g_far = grm.qm_energy_and_gradient(far)
        assert fd == pytest.approx(g_far[0, 0], rel=1e-4)
        assert g_far[0, 0] > 100     # 2 x 1000 x 0.2 kcal/mol/A pulling it back
        # energies_sites (what mmtbx minimisers call) goes through it too
        target = grm.energies_sites(sites_cart=flex.vec3_double(x), compute_gradients=True)
        assert target.qm_energy == pytest.approx(e1, abs=1e-9)
        assert grm.n_engine_calls == calls   # x0 was cached, nothing else asked QM
    finally:
        grm.end_expansion()
    # after the expansion QM answers again, and differs from the local model
    e_true, _ = grm.qm_energy_and_gradient(x)
    assert grm.n_engine_calls == calls + 1
    assert abs(e_true - e1) > 1e-6


def test_a_failing_force_field_leaves_qm_to_answer(peptide):
    import copy
    from qr_phenix.engines.base import EngineError
    grm = copy.copy(peptide.get_restraints_manager().geometry)
    grm.local_model = None

    def broken():
        raise EngineError("xtb GFN-FF: unknown atom type\nmore lines")
    grm.shape_factory = broken
    x0 = np.array(peptide.get_sites_cart())
    e_qm, _ = grm.qm_energy_and_gradient(x0)
    grm.expand_at(x0)
    assert grm.expansion_available() == (
        False, "gfnff failed: xtb GFN-FF: unknown atom type")
    x = x0 + 0.01
    calls = grm.n_engine_calls
    e, _ = grm.qm_energy_and_gradient(x)
    assert grm.n_engine_calls == calls + 1     # QM, not a local model
    grm.end_expansion()


def _refine(start_pdb, helix_mtz, out, k):
    return run_checked(Program, [
        start_pdb, helix_mtz, "qm_restraints.restraints=qm", "qm_restraints.engine=gfn2",
        "qm_restraints.engine_options.solvent=None", "refinement.bulk_solvent=False",
        "refinement.adp=none", "refinement.validation=off", "refinement.weight=0.25",
        "refinement.qm_local_iterations=%d" % k, "refinement.qm_local_scope=all",
        "output.prefix=%s" % out],
        logger=null_out())


def test_steps_on_the_local_model_refine_as_well_with_fewer_qm_gradients(tmp_path, helix_pdb,
                                                                        helix_mtz):
    """The helix after 1000 K library MD (0.6 A mean shift), X-ray target at a
    fixed weight, up to 10 cycles of 25 iterations.  Measured: 298 QM
    gradients with one per step, R-free 0.0611, QM energy -34.5 kcal/mol;
    28 with 10 steps per gradient (converged after cycle 9), 0.0595, -35.8;
    9 of 9 helix H-bonds either way."""
    needs_engine("gfnff")
    from qr_phenix.benchmark.perturb import Perturber
    text, _ = Perturber(helix_pdb).run(0.6, 1)
    start = tmp_path / "start.pdb"
    start.write_text(text)
    exact = _refine(str(start), helix_mtz, tmp_path / "exact", 0)
    local = _refine(str(start), helix_mtz, tmp_path / "local", 10)
    calls = lambda r: r["engine"]["calls"]
    assert calls(local) * 5 < calls(exact)
    for run in (exact, local):
        assert run["final"]["r_free"] < run["start"]["r_free"] - 0.2
    assert local["final"]["r_free"] < exact["final"]["r_free"] + 0.005
    # the QM energy of the model handed back: the local model's steps end on QM
    assert local["final"]["restraint_energy"] < exact["final"]["restraint_energy"] + 2


@pytest.mark.parametrize("engine", ["gfn2", "pm7"])
def test_local_models_warn_for_engines_gfnff_was_not_measured_to_fit(tmp_path, helix_pdb,
                                                                     helix_mtz, engine):
    """GFN-FF's curvature fits GFN2's; with PM7 the 1us0 study's weight trials
    broke the bond limit at every weight, so the log warns (and goes on)."""
    needs_engine("gfnff")
    needs_engine(engine)
    r = run_checked(Program, [
        helix_pdb, helix_mtz, "qm_restraints.restraints=qm", "qm_restraints.engine=%s" % engine,
        "qm_restraints.engine_options.solvent=None", "refinement.bulk_solvent=False",
        "refinement.adp=none", "refinement.validation=off", "refinement.weight=0.25",
        "refinement.macro_cycles=1", "refinement.max_iterations=4",
        "refinement.qm_local_iterations=2", "refinement.qm_local_scope=all",
        "output.prefix=%s" % (tmp_path / engine)],
        logger=null_out())
    log = open(r["outputs"]["log"]).read()
    warned = "Warning: refinement.qm_local_iterations=2 with engine %s" % engine in log
    assert warned == (engine == "pm7")
    # local-model cycles run twice max_iterations: 8 steps, i.e. 4 local
    # models of 2 steps, one QM gradient each, plus the start's
    assert "macro-cycles of 8 iterations" in log
    assert r["engine"]["calls"] == 5


@pytest.mark.parametrize("mode", ["real_space", "geometry"])
def test_map_and_geometry_refinements_run_on_local_models_too(tmp_path, helix_pdb, mode):
    """The map and the restraints-only minimisers run on local models as the
    X-ray one does: one cycle of 2 x 8 iterations with a QM gradient every 4
    asks QM at the start, after iterations 4, 8 and 12, and at the end (5
    calls), without falling back to QM at every step."""
    needs_engine("gfnff")
    from tst_refine import write_map
    data = []
    if mode == "real_space":
        map_path = tmp_path / "helix_4A.mrc"
        write_map(helix_pdb, map_path)
        data = [str(map_path), "refinement.resolution=4", "refinement.weight=0.25"]
    r = run_checked(Program, [
        helix_pdb] + data + [
        "qm_restraints.restraints=qm", "qm_restraints.engine=gfn2",
        "qm_restraints.engine_options.solvent=None", "refinement.validation=off",
        "refinement.macro_cycles=1", "refinement.max_iterations=8",
        "refinement.qm_local_iterations=4", "refinement.qm_local_scope=all",
        "output.prefix=%s" % (tmp_path / mode)],
        logger=null_out())
    assert r["mode"] == mode
    log = open(r["outputs"]["log"]).read()
    assert "macro-cycles of 16 iterations" in log
    assert "a QM gradient at every L-BFGS step" not in log
    assert r["engine"]["calls"] == 5


@pytest.mark.parametrize("scope", ["all", "weight_trials"])
def test_local_scope_weight_trials_keeps_qm_at_every_step_of_the_cycles(tmp_path, helix_pdb,
                                                                         helix_mtz, scope):
    """qm_local_scope=weight_trials: the two weight trials (4 iterations, a
    QM gradient every 4) run on local models, the second cycle's minimisation
    (6 iterations) on QM at every step; scope=all runs that cycle on local
    models too, with 12 iterations."""
    needs_engine("gfnff")
    r = run_checked(Program, [
        helix_pdb, helix_mtz, "qm_restraints.restraints=qm", "qm_restraints.engine=gfn2",
        "qm_restraints.engine_options.solvent=None", "refinement.bulk_solvent=False",
        "refinement.adp=none", "refinement.validation=off", "refinement.weight_trials=0.25 0.5",
        "refinement.qm_extra_trials=0", "refinement.macro_cycles=2",
        "refinement.max_iterations=6", "refinement.qm_trial_iterations=4",
        "refinement.qm_local_iterations=4", "refinement.qm_local_scope=%s" % scope,
        "output.prefix=%s" % (tmp_path / scope)], logger=null_out())
    log = open(r["outputs"]["log"]).read()
    trials, cycle = (c["engine_calls"] for c in r["cycles"][:2])
    # each trial: one local model at the start (its gradient known) and one
    # QM gradient where its 4 steps end, at most
    assert trials <= 2 * 2
    if scope == "weight_trials":
        assert "Local QM models in the weight trials" in log
        assert cycle >= 6          # one QM gradient per L-BFGS step, or more
    else:
        assert "macro-cycles of 12 iterations" in log
        assert cycle <= 4          # 12 steps on 3 local models, and the end point


def test_fragment_runs_take_their_weight_trials_on_local_models_by_default(tmp_path, helix_pdb,
                                                                          helix_mtz):
    """QM from fragments (the helix cut into fragments): qm_local_iterations=Auto
    puts the QM stage's weight trials on local models (the two trials of 6
    iterations share the start's QM gradient) and its next cycle on QM at
    every step (6 iterations, 6 QM gradients or more)."""
    needs_engine("gfnff")
    r = run_checked(Program, [
        helix_pdb, helix_mtz, "qm_restraints.restraints=qm", "qm_restraints.engine=gfn2",
        "fragments.enabled=True", "fragments.solvent=None",
        "qm_restraints.engine_options.solvent=None", "refinement.bulk_solvent=False",
        "refinement.adp=none", "refinement.validation=off", "refinement.macro_cycles=1",
        "refinement.qm_macro_cycles=2", "refinement.qm_weight_trials=0.25 0.5",
        "refinement.qm_extra_trials=0", "refinement.max_iterations=6",
        "output.prefix=%s" % (tmp_path / "fragments")], logger=null_out())
    log = open(r["outputs"]["log"]).read()
    assert "Local QM models: 10 L-BFGS steps per QM gradient in the weight trials" \
        " (QM from fragments, where" in log
    n_library = r["library_stage"]["cycles"]
    trials, cycle = (c["engine_calls"] for c in r["cycles"][n_library:n_library + 2])
    assert trials <= 2
    assert cycle >= 6


def test_scaled_curvature_makes_the_local_model_exact_for_a_stiffer_energy():
    """Where QM's energy is k times as stiff as the force field about x0 (here
    both quadratic), the local model with curvature scale k is QM itself,
    within the trust radius; unscaled it is not (PM7 on the helix: ~1.4x
    GFN-FF's curvature along its descent, qm_expansion.CURVATURE_SCALE)."""
    from qr_phenix.qm_expansion import LocalQMModel

    class Harmonic:
        def __init__(self, k, centre):
            self.k, self.centre = k, centre

        def energy_and_gradient(self, sites):
            d = sites - self.centre
            return 0.5 * self.k * float(np.sum(d * d)), self.k * d

    rng = np.random.default_rng(3)
    x0 = rng.normal(0, 1, (5, 3))
    qm = Harmonic(700.0, x0 + 0.05)            # the QM minimum elsewhere
    ff = Harmonic(500.0, x0 - 0.02)            # a softer force field elsewhere
    x = x0 + rng.normal(0, 0.05, x0.shape)
    for k, exact in ((1.4, True), (1.0, False)):
        local = LocalQMModel(ff, curvature_scale=k)
        local.expand_at(x0, *qm.energy_and_gradient(x0))
        e, g = local.energy_and_gradient(x)
        e_qm, g_qm = qm.energy_and_gradient(x)
        assert (abs(e - e_qm) < 1e-8 and np.abs(g - g_qm).max() < 1e-8) == exact
        e0, g0 = local.energy_and_gradient(x0)       # QM's at the point, whatever k
        assert e0 == pytest.approx(qm.energy_and_gradient(x0)[0])
        assert np.abs(g0 - qm.energy_and_gradient(x0)[1]).max() < 1e-12


def test_pm7_local_models_take_the_measured_curvature_scale():
    from qr_phenix.qm_expansion import CURVATURE_SCALE
    needs_engine("gfnff")
    needs_engine("pm7")
    model = process_model(str(PEPTIDE_H_PDB), grm_normalization=False)
    params = rm.phil_scope.extract().qm_restraints
    params.restraints, params.engine, params.engine_options.solvent = "qm", "pm7", None
    rm.setup_restraints(model, params, log=null_out())
    grm = model.get_restraints_manager().geometry
    grm.expand_at(np.array(model.get_sites_cart()))
    grm.end_expansion()
    assert grm.local_model.curvature_scale == CURVATURE_SCALE["pm7"] == 1.4

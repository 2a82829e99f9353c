"""Every quantum engine against finite differences of its own energy, with its
units pinned to reference values, plus the failure paths (bad charge, missing
program, distorted geometry).  Real engines, no mocks; a missing engine skips
with a reason that names it.
"""


import numpy as np
import pytest
from ase.data import atomic_numbers
from libtbx.utils import Sorry

from qr_phenix import units
from qr_phenix.benchmark.machine import ACETAMIDE_PDB, read_atoms
from qr_phenix.engines import (
    ENGINES, EngineError, EngineSettings, EngineUnavailable, energy_and_gradient,
    engine_names, get_engine, make_calculator, phil_choice)
from qr_phenix.engines.mopac import UnreadableGradientTable, read_out

from paths import HELIX_PDB as HELIX

# a small amide for the PySCF engines
ACETAMIDE_SYMBOLS, ACETAMIDE = read_atoms(ACETAMIDE_PDB)


@pytest.fixture(scope="module")
def helix():
    return read_atoms(HELIX)


def calculator(name, **kw):
    """make_calculator, or skip naming the engine when it is not installed."""
    settings = EngineSettings(name=name, **kw)
    ok, reason = get_engine(name).available(settings)
    if not ok:
        pytest.skip("engine %s not available: %s" % (name, reason))
    return make_calculator(settings)


def fd_error(calc, symbols, positions, n_atoms=6, step=1e-3, seed=0):
    """||g_fd - g|| / ||g|| over n_atoms random atoms x 3 coordinates."""
    g = energy_and_gradient(calc, symbols, positions).gradient
    atoms = np.random.default_rng(seed).choice(len(symbols), n_atoms, replace=False)
    analytic, numeric = [], []
    for i in atoms:
        for k in range(3):
            p = positions.copy()
            p[i, k] += step
            e_plus = energy_and_gradient(calc, symbols, p).energy
            p[i, k] -= 2 * step
            e_minus = energy_and_gradient(calc, symbols, p).energy
            numeric.append((e_plus - e_minus) / (2 * step))
            analytic.append(g[i, k])
    analytic, numeric = np.array(analytic), np.array(numeric)
    return np.linalg.norm(numeric - analytic) / np.linalg.norm(analytic)


# -- registry ---------------------------------------------------------------

def test_registry_names_and_phil_choice():
    assert engine_names() == ["gfn2", "gfn1", "xtb", "gfnff", "pm7", "pm6_d3h4", "pm6",
                              "hf", "dft", "ase", "ani2x", "aimnet2", "test"]
    assert phil_choice() == "*gfn2 " + " ".join(engine_names()[1:])
    assert phil_choice("pm7").split()[4] == "*pm7"
    for engine in ENGINES.values():
        assert engine.description
        ok, reason = engine.available()
        assert ok or reason


def test_unknown_engine_lists_valid_names():
    with pytest.raises(Sorry) as e:
        make_calculator(EngineSettings(name="orca"))
    assert "orca" in str(e.value) and "gfn2" in str(e.value) and "pm6_d3h4" in str(e.value)
    with pytest.raises(Sorry):
        phil_choice("nope")


# -- gradients against finite differences, units pinned ----------------------

# Reference energies of the helix (94 atoms, charge 0, singlet), measured with
# tblite 0.8.0, xtb 6.5.1 and MOPAC 22 (heat of formation): an engine whose
# energy is off by a unit factor (x23, x627) fails here even if its gradient
# is consistent with its energy.
HELIX_REFERENCE_KCAL = {
    "gfn2": -171.681284 * units.KCAL_PER_MOL_PER_HARTREE,
    "xtb": -171.681339 * units.KCAL_PER_MOL_PER_HARTREE,
    "pm7": -612.9154,
    "pm6_d3h4": -571.5862,
    "pm6": -551.1671,
}

# Relative FD error allowed: 1e-3, except where MOPAC's own analytic gradient
# is not the derivative of its energy (measured here, MOPAC 22; plain PM6 on
# the same code path is exact, so parsing and units are not the cause):
# * PM6-D3H4: 4e-4 (8 atoms) to 1.1e-3 (these 6), up to 0.05 kcal/mol/A on
#   H-bonded N, O, H; the central difference does not depend on the step.
# * PM7: 8e-3 (8 atoms) to 5e-2 (these 6), up to 2.3 kcal/mol/A on a backbone
#   N; the central difference itself drifts with the step (2.5e-4..4e-3 A),
#   so the PM7 energy surface has kinks there.  The bound still catches unit,
#   sign and parsing errors (those give errors of order 1 or more).
FD_TOLERANCE = {"pm6_d3h4": 3e-3, "pm7": 0.1}


@pytest.mark.parametrize("name", ["gfn2", "gfn1", "xtb", "gfnff", "pm7", "pm6_d3h4", "pm6",
                                  "test"])
def test_helix_gradient_matches_finite_difference(helix, name):
    symbols, positions = helix
    calc = calculator(name)
    result = energy_and_gradient(calc, symbols, positions)
    if name in HELIX_REFERENCE_KCAL:
        assert result.energy == pytest.approx(HELIX_REFERENCE_KCAL[name], abs=0.5)
    rel = fd_error(calc, symbols, positions)
    print("%s: FD relative error %.2e" % (name, rel))
    assert rel < FD_TOLERANCE.get(name, 1e-3), "%s gradient != dE/dx: %.2e" % (name, rel)


def test_mopac_mozyme_gradient(helix):
    symbols, positions = helix
    calc = calculator("pm6", mozyme=True)
    # MOZYME's localized-orbital SCF adds noise: measured 2e-3 on 8 atoms.
    rel = fd_error(calc, symbols, positions, n_atoms=2)
    assert rel < 5e-3


def test_mopac_out_and_aux_give_the_same_result(helix):
    """Without MOZYME the result is read from the .out (no .aux written);
    with it from the .aux.  One run that writes both: the two readers agree
    to the .out's digits (1e-5 kcal/mol, 1e-6 kcal/mol/A), atom by atom."""
    symbols, positions = helix
    calc = calculator("pm7")
    assert "AUX" not in calc.keywords()
    assert {"AUX(PRECISION=9)", "MOZYME"} <= set(
        calculator("pm7", mozyme=True).keywords().split())
    numbers = [atomic_numbers[e] for e in symbols]
    energy, gradient = calc._run_mopac(numbers, positions, retry=False, aux=True)
    energy_out, gradient_out = read_out(calc.scratch.file("job.out"), len(symbols))
    assert energy_out == pytest.approx(energy, abs=1e-4)
    assert np.abs(gradient_out - gradient).max() < 1e-5
    assert np.abs(gradient).max() > 10.0


def test_mopac_gradient_too_wide_for_the_out_is_read_from_the_aux(helix):
    """Two helix atoms 0.52 A apart, as a line search probed in the 1us0
    study: the .out prints a 1.2e5 kcal/mol/A gradient as asterisks."""
    symbols, positions = helix
    p = positions.copy()
    bond = p[88] - p[87]                       # C=O of the last residue
    p[88] = p[87] + 0.52 * bond / np.linalg.norm(bond)
    calc = calculator("pm7")
    result = energy_and_gradient(calc, symbols, p)
    with pytest.raises(UnreadableGradientTable, match="expected 282"):
        read_out(calc.scratch.file("job.out"), len(symbols))
    assert np.isfinite(result.gradient).all()
    assert np.abs(result.gradient).max() > 1e5


def test_ase_engine_by_import_path(helix):
    symbols, positions = helix
    calc = calculator("ase", calculator="ase.calculators.emt:EMT")
    assert fd_error(calc, symbols, positions, n_atoms=4) < 1e-3


@pytest.mark.parametrize("name,kw", [
    ("hf", dict(basis="6-31g", dispersion="d3bj")),
    ("dft", dict(basis="6-31g", xc="b3lyp", dispersion="d3bj")),
])
def test_pyscf_gradient_and_units(name, kw):
    calc = calculator(name, threads=2, **kw)
    if name == "dft":
        # A coarse grid keeps the test fast; grid_response (the default)
        # makes the gradient the exact derivative of the energy.
        calc.grid_level = 1
    result = energy_and_gradient(calc, ACETAMIDE_SYMBOLS, ACETAMIDE)
    # units pinned against PySCF called directly (Hartree)
    from pyscf import dft, gto, scf
    mol = gto.M(atom=list(zip(ACETAMIDE_SYMBOLS, map(tuple, ACETAMIDE))), basis="6-31g",
                verbose=0)
    mf = scf.RHF(mol) if name == "hf" else dft.RKS(mol, xc="b3lyp")
    if name == "dft":
        mf.grids.level = 1
    mf = mf.density_fit()
    mf.disp = "d3bj"
    ref = mf.kernel()
    assert result.energy == pytest.approx(ref * units.KCAL_PER_MOL_PER_HARTREE, abs=5e-3)
    rel = fd_error(calc, ACETAMIDE_SYMBOLS, ACETAMIDE, n_atoms=2)
    print("%s: FD relative error %.2e" % (name, rel))
    assert rel < 1e-3


def test_gfn2_tblite_and_xtb_binary_agree(helix):
    symbols, positions = helix
    a = energy_and_gradient(calculator("gfn2"), symbols, positions)
    b = energy_and_gradient(calculator("xtb"), symbols, positions)
    assert abs(a.energy - b.energy) < 0.1  # kcal/mol (measured 0.035)
    diff = np.linalg.norm(a.gradient - b.gradient) / np.linalg.norm(a.gradient)
    assert diff < 1e-3  # measured 1.6e-4
    assert np.abs(a.gradient - b.gradient).max() < 0.05  # kcal/mol/A


@pytest.mark.parametrize("name", ["gfn2", "xtb"])
def test_xtb_accuracy_loosens_the_scc(helix, name):
    # accuracy scales the SCC convergence thresholds: 0.01 is converged far
    # below what refinement sees, 1 (default) within ~1e-3 kcal/mol, 100
    # visibly looser but still the same surface
    symbols, positions = helix
    results = {acc: energy_and_gradient(calculator(name, accuracy=acc), symbols, positions)
               for acc in (0.01, 1.0, 100.0)}
    tight = results[0.01]
    error = {acc: abs(r.energy - tight.energy) for acc, r in results.items()}
    print("%s: |E - E(accuracy 0.01)| kcal/mol: %s" % (name, error))
    assert error[1.0] < error[100.0] < 1.0
    for acc in (1.0, 100.0):
        g = results[acc].gradient
        assert np.linalg.norm(g - tight.gradient) / np.linalg.norm(tight.gradient) < 0.01


def test_accuracy_must_be_positive():
    from qr_phenix.restraints_manager import phil_scope
    from qr_phenix.engines.settings import engine_settings_from_params
    params = phil_scope.extract().qm_restraints
    params.engine_options.accuracy = 0
    with pytest.raises(Sorry, match="accuracy=0.*positive"):
        engine_settings_from_params(params, charge=0, multiplicity=1)
    params.engine_options.accuracy = 3
    assert engine_settings_from_params(params, 0, 1).accuracy == 3


def test_gfnff_builds_a_new_topology_for_new_atoms(helix):
    # GFN-FF keeps its topology file between calls; a calculator that goes on
    # to other atoms must not read the old one
    symbols, positions = helix
    calc = calculator("gfnff")
    energy_and_gradient(calc, symbols, positions)
    reused = energy_and_gradient(calc, ACETAMIDE_SYMBOLS, ACETAMIDE)
    fresh = energy_and_gradient(calculator("gfnff"), ACETAMIDE_SYMBOLS, ACETAMIDE)
    assert reused.energy == pytest.approx(fresh.energy, abs=1e-6)
    assert np.abs(reused.gradient - fresh.gradient).max() < 1e-6


def test_tblite_threads_give_the_same_energy(helix):
    # tblite 0.8.0 gave wrong energies with >1 OpenMP thread on some machines
    # (seen in this suite), so a request for 2 threads must still run on 1
    symbols, positions = helix
    one = energy_and_gradient(calculator("gfn2", threads=1), symbols, positions)
    two = energy_and_gradient(calculator("gfn2", threads=2), symbols, positions)
    assert abs(one.energy - two.energy) < 1e-5
    assert np.abs(one.gradient - two.gradient).max() < 1e-4


def test_solvent_changes_energy(helix):
    symbols, positions = helix
    gas = energy_and_gradient(calculator("gfn2"), symbols, positions).energy
    water = energy_and_gradient(calculator("gfn2", solvent="water"), symbols, positions).energy
    assert -200 < water - gas < -1  # solvation stabilises the polar helix (-63 measured)


# -- bad inputs ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["hf", "dft", "ase", "ani2x", "test"])
def test_implicit_solvent_refused_where_the_engine_has_none(name):
    # silently computing in vacuum would be a wrong result
    with pytest.raises(EngineError, match="no implicit solvent.*gfn2.*pm7"):
        make_calculator(EngineSettings(name=name, solvent="water"))


@pytest.mark.parametrize("name", ["gfn2", "xtb", "pm7", "hf", "test"])
def test_odd_electrons_with_singlet_fail_clearly(helix, name):
    symbols, positions = helix
    calc = calculator(name, charge=1)  # 399 electrons, multiplicity 1
    with pytest.raises(EngineError) as e:
        energy_and_gradient(calc, symbols, positions)
    assert "multiplicity" in str(e.value) and "charge" in str(e.value)


def test_doublet_runs(helix):
    symbols, positions = helix
    result = energy_and_gradient(calculator("gfn2", charge=1, multiplicity=2),
                                 symbols, positions)
    assert np.isfinite(result.energy)


@pytest.mark.parametrize("name,program", [("xtb", "xtb"), ("pm7", "mopac")])
def test_missing_binary_says_how_to_install(name, program):
    settings = EngineSettings(name=name, binary="/nonexistent/" + program)
    ok, reason = get_engine(name).available(settings)
    assert not ok and "apt-get install %s" % program in reason
    with pytest.raises(EngineUnavailable) as e:
        make_calculator(settings)
    assert "apt-get install %s" % program in str(e.value)


@pytest.mark.parametrize("name", ["ani2x", "aimnet2"])
def test_ml_engines_need_a_local_weights_file(name):
    settings = EngineSettings(name=name)
    ok, reason = get_engine(name).available(settings)
    assert not ok and "offline" in reason and "model_path" in reason
    with pytest.raises(EngineUnavailable):
        make_calculator(settings)


def test_ase_engine_errors():
    with pytest.raises(EngineError):
        make_calculator(EngineSettings(name="ase"))
    with pytest.raises(EngineUnavailable):
        make_calculator(EngineSettings(name="ase", calculator="no_such_pkg.mod:Calc"))


# -- retry path -----------------------------------------------------------------

@pytest.mark.parametrize("name", ["gfn2", "xtb", "pm7"])
def test_scf_retry_path_recovers(helix, name):
    # 3 SCF iterations cannot converge: the first attempt fails and the retry
    # (more iterations / other SCF settings) must give the normal result.
    symbols, positions = helix
    calc = calculator(name, max_iterations=3)
    result = energy_and_gradient(calc, symbols, positions)
    assert any("converged with" in line for line in calc.retry_log), calc.retry_log
    assert result.energy == pytest.approx(HELIX_REFERENCE_KCAL[name], abs=0.5)


def test_pyscf_retry_path():
    calc = calculator("hf", basis="sto-3g", dispersion=None, max_iterations=2)
    result = energy_and_gradient(calc, ACETAMIDE_SYMBOLS, ACETAMIDE)
    assert any("converged with" in line for line in calc.retry_log), calc.retry_log
    assert np.all(np.isfinite(result.gradient))


# Fe4, a random cluster: GFN2 SCC does not converge at 300 K in 1000
# iterations, it does at the smearing temperature (~3158 K)
FE4 = np.array([[2.980, -0.999, 0.072], [1.817, -1.926, -2.587], [-1.686, -0.737, -0.752],
                [0.790, 0.349, -1.620]])


def test_tblite_keeps_a_raised_electronic_temperature(caplog):
    from qr_phenix.engines.tblite import SMEARING_TEMPERATURE_K
    symbols = ["Fe"] * 4
    calc = calculator("gfn2")
    with caplog.at_level("WARNING", logger="qr_phenix.engines.tblite"):
        first = energy_and_gradient(calc, symbols, FE4)
    assert calc.raised_temperature == SMEARING_TEMPERATURE_K
    assert len(caplog.records) == 1 and "3158 K" in caplog.records[0].getMessage()
    assert any("raised from 300 K to 3158 K" in line for line in calc.retry_log)
    # the next point of a line search is on the same surface: the restart at
    # 3158 K, no retry, no second message; the energy is that of a fresh
    # calculator at 3158 K
    moved = FE4 + 0.002
    caplog.clear()
    with caplog.at_level("WARNING", logger="qr_phenix.engines.tblite"):
        second = energy_and_gradient(calc, symbols, moved)
    assert calc.retry_log == [] and not caplog.records
    hot = calculator("gfn2", electronic_temperature=SMEARING_TEMPERATURE_K)
    assert second.energy == pytest.approx(energy_and_gradient(hot, symbols, moved).energy,
                                          abs=1e-4)
    assert hot.raised_temperature is None
    # and close to the first point (no jump between surfaces)
    assert abs(second.energy - first.energy) < 1.0


@pytest.mark.parametrize("name", ["gfn2", "xtb", "pm7", "test"])
def test_distorted_geometry_converges_or_raises(helix, name):
    symbols, positions = helix
    p = positions.copy()
    p[5] = p[4] + [0.3, 0.0, 0.0]  # two atoms 0.3 A apart
    p += np.random.default_rng(3).normal(scale=0.3, size=p.shape)
    calc = calculator(name)
    try:
        result = energy_and_gradient(calc, symbols, p)
    except EngineError as e:
        assert "distorted" in str(e)
        return
    assert np.isfinite(result.energy) and np.all(np.isfinite(result.gradient))

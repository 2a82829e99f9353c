"""Fragment-based QM restraints: partition, gradient assembly, parallel runs.

Real engine (GFN2-xTB through tblite) on the 94-atom helix a87_99_h.pdb, on
a slice of 1us0 and on all of prepared 1us0 (6.8k atoms, symmetry neighbours
in P21; one gradient, about 40 s on 2 cores); timings are in
benchmarks/fragments_scaling.py, not here.
"""

import numpy as np
import pytest

from paths import ENTRY_1US0 as ENTRY, HELIX_PDB as HELIX

iotbx_pdb = pytest.importorskip("iotbx.pdb", reason="requires cctbx (iotbx)")
pytest.importorskip("tblite", reason="requires tblite (GFN2-xTB engine)")

from qr_phenix.engines import make_calculator  # noqa: E402
from qr_phenix.engines.base import EngineSettings, energy_and_gradient  # noqa: E402
from qr_phenix.fragmentation import master_phil_str, fragments_enabled  # noqa: E402
from qr_phenix.fragmentation.evaluator import FragmentEvaluator  # noqa: E402
from qr_phenix.fragmentation.parallel import (  # noqa: E402
    ProcessPoolExecutor, SerialExecutor)
from qr_phenix.fragmentation.partition import (  # noqa: E402
    bisect_cores, build_partition, fast_covalent_bonds)
from qr_phenix.qm_region import covalent_bonds  # noqa: E402


def _helix():
    inp = iotbx_pdb.input(str(HELIX))
    h = inp.construct_hierarchy()
    return h, inp.crystal_symmetry(), np.array(h.atoms().extract_xyz())


#: gradients recomputed at the same point differ by the SCC convergence
#: (restart from the previous wavefunction vs a fresh guess): ~1e-2 kcal/mol/A
SCC_NOISE = 2e-2


def _elements(h):
    return [a.element.strip().capitalize() for a in h.atoms()]


def test_phil_parses_and_auto_threshold():
    import iotbx.phil
    params = iotbx.phil.parse(master_phil_str).extract()
    assert params.parallel.scheduler is None
    assert fragments_enabled(params.fragments, 10000) is True
    assert fragments_enabled(params.fragments, 100) is False
    assert fragments_enabled(params.fragments, 10000, qm_selection="chain A") is False


def test_fast_bonds_match_reference_implementation():
    h, _, sites = _helix()
    els = _elements(h)
    ref = set(covalent_bonds(els, sites))
    fast = set(map(tuple, fast_covalent_bonds(els, sites).tolist()))
    assert fast == ref


def test_bisection_covers_every_unit_once():
    rng = np.random.default_rng(1)
    centres = rng.uniform(0, 50, size=(500, 3))
    weights = rng.integers(3, 25, size=500).astype(float)
    cores = bisect_cores(centres, weights, 60)
    flat = np.sort(np.concatenate(cores))
    assert np.array_equal(flat, np.arange(500))
    assert all(weights[c].sum() <= 60 or len(c) == 1 for c in cores)


def test_partition_every_atom_core_once_and_neutral_closed_shell():
    h, cs, sites = _helix()
    part = build_partition(h, sites, crystal_symmetry=cs, core_size=30, buffer_radius=4.0)
    cores = np.sort(np.concatenate([f.core for f in part.fragments]))
    assert np.array_equal(cores, np.arange(len(sites)))
    assert len(part.images) == 0  # P1 box with a 5 A margin: no neighbours
    assert all(f.charge == 0 for f in part.fragments)
    assert all(f.region.caps for f in part.fragments)


def test_fragment_gradient_approaches_whole_model():
    h, cs, sites = _helix()
    whole = energy_and_gradient(make_calculator(EngineSettings(name="gfn2")),
                                _elements(h), sites)
    errors = []
    for buffer_radius in (3.0, 5.0):
        ev = FragmentEvaluator(h, EngineSettings(name="gfn2"), crystal_symmetry=cs,
                               core_size=30, buffer_radius=buffer_radius)
        _, g = ev.energy_and_gradient(sites)
        assert np.all(np.isfinite(g))
        errors.append(np.sqrt(np.mean(np.sum((g - whole.gradient) ** 2, axis=1))))
    rms_g = np.sqrt(np.mean(np.sum(whole.gradient ** 2, axis=1)))
    assert errors[1] < errors[0]
    assert errors[1] < 0.1 * rms_g, (errors, rms_g)
    # a buffer that covers everything gives the whole-model gradient exactly
    # (no lattice copies: with a 40 A buffer they would fill the fragment)
    ev = FragmentEvaluator(h, EngineSettings(name="gfn2"), crystal_symmetry=cs,
                           core_size=30, buffer_radius=40.0, include_symmetry=False)
    _, g = ev.energy_and_gradient(sites)
    assert np.abs(g - whole.gradient).max() < 1e-4


def test_integrated_energy_consistent_with_gradient():
    h, cs, sites = _helix()
    ev = FragmentEvaluator(h, EngineSettings(name="gfn2"), crystal_symmetry=cs,
                           core_size=30, buffer_radius=4.0)
    e0, g0 = ev.energy_and_gradient(sites)
    step = -1e-3 * g0 / np.linalg.norm(g0)
    e1, _ = ev.energy_and_gradient(sites + step)
    predicted = float(np.sum(g0 * step))
    assert e1 - e0 == pytest.approx(predicted, rel=0.05)
    assert e1 < e0


def test_rebuild_after_displacement():
    h, cs, sites = _helix()
    ev = FragmentEvaluator(h, EngineSettings(name="gfn2"), crystal_symmetry=cs,
                           core_size=30, buffer_radius=3.0, rebuild_displacement=0.5)
    assert ev.update_partition(sites) is True
    moved = sites.copy()
    moved[0, 0] += 0.3
    assert ev.update_partition(moved) is False
    moved[0, 0] += 0.3
    assert ev.update_partition(moved) is True
    assert ev.generation == 2
    # a hydrogen swinging round (OH, NH3+, water) does not rebuild: cores and
    # buffers are chosen by heavy atoms, and each H goes with its own
    hydrogen = [a.i_seq for a in h.atoms() if a.element.strip() == "H"][0]
    moved[hydrogen] += 1.0
    assert ev.update_partition(moved) is False and ev.generation == 2


def test_a_sibling_computes_on_its_leads_partition():
    """The force field of a local QM model (sibling) keeps the QM evaluator's
    fragments while atoms move beyond rebuild_displacement, and takes the new
    ones when the QM evaluator rebuilds."""
    h, cs, sites = _helix()
    lead = FragmentEvaluator(h, EngineSettings(name="gfn2"), crystal_symmetry=cs,
                             core_size=30, buffer_radius=3.0, rebuild_displacement=0.5)
    sibling = lead.sibling(EngineSettings(name="gfnff"))
    lead.update_partition(sites)
    first = lead.partition
    assert sibling.update_partition(sites) is True and sibling.partition is first
    moved = sites.copy()
    moved[0, 0] += 0.8
    assert sibling.update_partition(moved) is False
    assert sibling.partition is first
    assert lead.update_partition(moved) is True
    assert sibling.update_partition(moved) is True
    assert sibling.partition is lead.partition is not first
    assert sibling.generation == lead.generation


@pytest.fixture(scope="module")
def prepared_1us0():
    """1us0 prepared by qr_phenix.preparation (about 6.8k atoms, P21)."""
    pytest.importorskip("pdbfixer", reason="requires pdbfixer/openmm for preparation")
    pytest.importorskip("hydride", reason="requires hydride for preparation")
    if not ENTRY.exists():
        pytest.skip("missing %s" % ENTRY)
    from qr_phenix.preparation import prepare_file
    h, cs, _ = prepare_file(ENTRY)
    return h, cs


def test_full_1us0_partition_with_symmetry_neighbours(prepared_1us0):
    # its time is benchmarks/fragments_scaling.py's to measure, not a test's
    h, cs = prepared_1us0
    sites = np.array(h.atoms().extract_xyz())
    part = build_partition(h, sites, crystal_symmetry=cs, core_size=60, buffer_radius=4.0)
    assert len(part.images) > 0  # crystal contacts in P21 reach into buffers
    cores = np.sort(np.concatenate([f.core for f in part.fragments]))
    assert np.array_equal(cores, np.arange(len(sites)))
    # ligands are core somewhere, with their charges
    labels = {part.units[k].label: part.units[k].charge for f in part.fragments
              for k in f.units}
    assert labels["A NDP 318"] == -4 and labels["A LDT 320"] == -1


def test_group_units_cut_single_bonds_and_keep_charges(prepared_1us0):
    from qr_phenix.chemical_groups import model_units
    h, _ = prepared_1us0
    residues = model_units(h, split_residues=False)
    groups = model_units(h, split_residues=True)
    assert sum(u.charge for u in groups) == sum(u.charge for u in residues) == -12
    n = h.atoms_size()
    assert np.array_equal(np.sort(np.concatenate([u.atoms for u in groups])), np.arange(n))
    names = [a.name.strip() for a in h.atoms()]
    resseq = [a.parent().parent().resseq_as_int() for a in h.atoms()]
    by_label = {u.label: u for u in groups}
    # a peptide group: C=O of residue 20 with N-H of residue 21, nothing else
    peptide = next(u for lab, u in by_label.items() if lab.startswith("A") and
                   " 20 C + " in lab)
    assert sorted((resseq[i], names[i]) for i in peptide.atoms) == [
        (20, "C"), (20, "O"), (21, "H"), (21, "N")]
    # charges sit on the group that carries them
    lys = [u for u in groups if " LYS " in u.label and u.charge]
    assert lys and all(u.label.endswith("side chain") for u in lys)
    assert by_label["A LDT 320"].charge == -1  # ligands stay whole
    # every cut bond is a single bond to CA (N-CA, CA-C, CA-CB) or a ligand/metal bond
    elements = [a.element.strip().capitalize() for a in h.atoms()]
    sites = np.array(h.atoms().extract_xyz())
    unit_of = np.empty(n, dtype=int)
    for k, u in enumerate(groups):
        unit_of[u.atoms] = k
    bonds = fast_covalent_bonds(elements, sites)
    cut = bonds[unit_of[bonds[:, 0]] != unit_of[bonds[:, 1]]]
    protein = {"N", "CA", "C", "CB", "CD"}  # CD: proline ring to N
    for i, j in cut:
        pair = {names[i], names[j]}
        if names[i] in protein and names[j] in protein:
            assert "CA" in pair or pair == {"N", "CD"}, pair


def test_full_1us0_gradient_finite_for_every_atom(prepared_1us0):
    """The whole prepared entry with the refinement defaults (groups, core 40,
    buffer 3.5 A, ALPB water, P21 neighbours) on a 2-process pool."""
    import iotbx.phil
    from qr_phenix.fragmentation import fragment_solvent
    h, cs = prepared_1us0
    p = iotbx.phil.parse(master_phil_str).extract().fragments
    sites = np.array(h.atoms().extract_xyz())
    settings = fragment_solvent(EngineSettings(name="gfn2"), p.solvent)
    assert settings.solvent == "water"
    pool = ProcessPoolExecutor(nproc=2, threads_per_worker=1)
    try:
        ev = FragmentEvaluator(h, settings, crystal_symmetry=cs, core_size=p.core_size,
                               buffer_radius=p.buffer_radius, executor=pool)
        _, g = ev.energy_and_gradient(sites)
    finally:
        pool.close()
    assert g.shape == (h.atoms_size(), 3)
    assert np.all(np.isfinite(g))
    norm = np.linalg.norm(g, axis=1)
    assert np.all(norm > 0)
    ligands = np.array([a.parent().resname.strip() in ("NDP", "LDT", "CIT")
                        for a in h.atoms()])
    assert ligands.sum() > 100
    # a crystal structure near a minimum: typical forces are small (measured:
    # median 8, 99th percentile 71 kcal/mol/A).  The largest (~860) are real:
    # C-terminal Glu 313 was rebuilt by PDBFixer from its N alone (C=O 1.07 A)
    assert np.median(norm) < 20 and np.percentile(norm, 99) < 150, (
        np.median(norm), np.percentile(norm, 99))
    assert len(ev.partition.images) > 0


def test_ligand_slice_process_pool_equal_serial(prepared_1us0, tmp_path):
    """NADPH + inhibitor pocket: finite gradients for ligands, pool == serial,
    a killed pool worker is replaced and its fragment re-run."""
    h0, cs = prepared_1us0
    sel = h0.atom_selection_cache().selection("resname NDP or resname LDT")
    h = h0.select(sel)
    h.atoms().reset_i_seq()
    sites = np.array(h.atoms().extract_xyz())
    s = EngineSettings(name="gfn2")
    serial = FragmentEvaluator(h, s, crystal_symmetry=cs, core_size=40, buffer_radius=3.0,
                               include_symmetry=False)
    e1, g1 = serial.energy_and_gradient(sites)
    assert np.all(np.isfinite(g1)) and np.abs(g1).max() > 0
    pool = ProcessPoolExecutor(nproc=2, threads_per_worker=1)
    try:
        ev = FragmentEvaluator(h, s, crystal_symmetry=cs, core_size=40, buffer_radius=3.0,
                               include_symmetry=False, executor=pool)
        e2, g2 = ev.energy_and_gradient(sites)
        assert np.abs(g2 - g1).max() < 1e-6  # both from fresh calculators
        assert e2 == pytest.approx(e1, abs=1e-6)
        ev.inject_failure = ("exit", str(tmp_path / "pool_marker"))
        _, g3 = ev.energy_and_gradient(sites)
        assert pool.n_pool_restarts == 1
        assert np.abs(g3 - g1).max() < SCC_NOISE
    finally:
        pool.close()


def test_serial_retry_after_engine_failure(tmp_path):
    h, cs, sites = _helix()
    ex = SerialExecutor(retries=1)
    ev = FragmentEvaluator(h, EngineSettings(name="gfn2"), crystal_symmetry=cs,
                           core_size=30, buffer_radius=3.0, executor=ex)
    _, g1 = ev.energy_and_gradient(sites)
    ev.inject_failure = ("raise", str(tmp_path / "serial_marker"))
    _, g2 = ev.energy_and_gradient(sites)
    assert ex.n_retried == 1
    assert np.abs(g2 - g1).max() < SCC_NOISE


@pytest.fixture(scope="module")
def dask_executor():
    pytest.importorskip("distributed", reason="requires dask distributed")
    from qr_phenix.fragmentation.parallel import DaskExecutor
    ex = DaskExecutor(scheduler="local", nproc=2, threads_per_worker=1, retries=2)
    yield ex
    ex.close()


def test_dask_two_workers_equal_in_process(dask_executor):
    h, cs, sites = _helix()
    s = EngineSettings(name="gfn2")
    _, g_serial = FragmentEvaluator(h, s, crystal_symmetry=cs, core_size=30,
                                    buffer_radius=4.0).energy_and_gradient(sites)
    assert len(dask_executor.client.scheduler_info()["workers"]) == 2
    ev = FragmentEvaluator(h, s, crystal_symmetry=cs, core_size=30, buffer_radius=4.0,
                           executor=dask_executor)
    _, g_dask = ev.energy_and_gradient(sites)
    assert np.abs(g_dask - g_serial).max() < 1e-6


def test_dask_worker_death_reruns_fragment(dask_executor, tmp_path):
    h, cs, sites = _helix()
    s = EngineSettings(name="gfn2")
    ev = FragmentEvaluator(h, s, crystal_symmetry=cs, core_size=30, buffer_radius=4.0,
                           executor=dask_executor)
    _, g1 = ev.energy_and_gradient(sites)
    ev.inject_failure = ("exit", str(tmp_path / "dask_marker"))
    # a lost fragment that is never rerun hangs here (CI's time limit ends it)
    _, g2 = ev.energy_and_gradient(sites)
    assert (tmp_path / "dask_marker").exists()  # the failure really happened
    assert np.abs(g2 - g1).max() < SCC_NOISE


def test_calculators_of_earlier_partitions_are_dropped():
    """After a rebuild only the new fragments' calculators stay cached (with
    them their wavefunctions and any engine scratch directory)."""
    from qr_phenix.fragmentation import parallel
    h, cs, sites = _helix()
    ev = FragmentEvaluator(h, EngineSettings(name="gfn2"), crystal_symmetry=cs,
                           core_size=30, buffer_radius=3.0)
    ev.energy_and_gradient(sites)
    mine = lambda: [k[0][1] for k in parallel._CALCULATORS if k[0][0] == ev._id]
    assert set(mine()) == {1} and len(mine()) == len(ev.partition.fragments)
    ev.update_partition(sites, force=True)
    ev.energy_and_gradient(sites)
    assert set(mine()) == {2} and len(mine()) == len(ev.partition.fragments)

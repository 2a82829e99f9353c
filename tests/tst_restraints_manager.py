"""The QM restraints manager as mmtbx sees it: real cctbx, real GFN2-xTB."""

import numpy as np
import pytest
import iotbx.pdb
from libtbx.utils import Sorry
from scitbx.array_family import flex

from qr_phenix import chemistry
from qr_phenix.monomer_library import process_model
from qr_phenix import restraints_manager as rm

pytest.importorskip("tblite", reason="engine gfn2 needs tblite (pip install tblite)")


def qm_params(solvent=None, **kw):
    """GFN2 in vacuum unless asked: the reference energies here are vacuum ones."""
    p = rm.phil_scope.extract().qm_restraints
    p.restraints = "qm"
    p.engine = "gfn2"
    p.engine_options.solvent = solvent
    for k, v in kw.items():
        setattr(p, k, v)
    return p


@pytest.fixture(scope="module")
def helix(helix_pdb):
    return process_model(helix_pdb, grm_normalization=False)


@pytest.fixture(scope="module")
def qm_helix(helix):
    model = process_model(helix, grm_normalization=False)
    rm.setup_restraints(model, qm_params())
    return model


def central_difference(manager, sites, atoms, delta=1e-3):
    s = np.array(sites)
    out = []
    for i in atoms:
        for k in range(3):
            plus, minus = s.copy(), s.copy()
            plus[i, k] += delta
            minus[i, k] -= delta
            ep = manager.energies_sites(sites_cart=flex.vec3_double(plus)).target
            em = manager.energies_sites(sites_cart=flex.vec3_double(minus)).target
            out.append((ep - em) / (2 * delta))
    return np.array(out)


def test_whole_model_energies_sites_has_qm_target_and_library_statistics(qm_helix):
    grm = qm_helix.get_restraints_manager().geometry
    assert isinstance(grm, rm.QMRestraintsManager)
    sites = qm_helix.get_sites_cart()
    given = flex.vec3_double(sites.size(), (1.0, 0.0, 0.0))
    es = grm.energies_sites(sites_cart=sites, compute_gradients=True, gradients=given)
    # gradients are added into the caller's array, as cctbx does
    assert es.gradients.id() == given.id()
    g = np.array(es.gradients) - np.array([1.0, 0.0, 0.0])
    assert np.all(np.isfinite(g)) and np.linalg.norm(g) > 1.0
    # GFN2 energy of the helix: -171.68 Eh = -107731 kcal/mol; target is relative
    assert es.qm_energy == pytest.approx(-171.6813 * 627.5095, abs=1.0)
    assert es.target == pytest.approx(es.qm_target)
    # library statistics still there (all-atom, X-ray X-H distances)
    n_bonds = es.bond_deviations()[3]
    assert n_bonds == es.n_bond_proxies and n_bonds > 90
    assert 0.0 < es.bond_deviations()[2] < 0.2
    assert es.angle_deviations()[2] > 0
    assert es.library_residual_sum > 0


def test_whole_model_gradient_matches_finite_difference(qm_helix):
    grm = qm_helix.get_restraints_manager().geometry
    sites = qm_helix.get_sites_cart()
    g = np.array(grm.energies_sites(sites_cart=sites, compute_gradients=True).gradients)
    atoms = [0, 17, 60]
    fd = central_difference(grm, sites, atoms)
    an = g[atoms].ravel()
    assert np.linalg.norm(fd - an) / np.linalg.norm(an) < 1e-3


def test_mmtbx_manager_and_normalisation_pass_through(helix):
    model = process_model(helix, grm_normalization=True)
    rm.setup_restraints(model, qm_params())
    es = model.restraints_manager_energies_sites(compute_gradients=True)
    geo = es.geometry
    assert es.normalization_factor == pytest.approx(1.0 / geo.number_of_restraints)
    assert es.target == pytest.approx(geo.residual_sum * es.normalization_factor)


def test_identical_coordinates_are_not_recomputed(qm_helix):
    grm = qm_helix.get_restraints_manager().geometry
    sites = qm_helix.get_sites_cart()
    grm.energies_sites(sites_cart=sites, compute_gradients=True)
    n = grm.n_engine_calls
    grm.energies_sites(sites_cart=sites.deep_copy(), compute_gradients=False)
    assert grm.n_engine_calls == n


def test_contact_wall_gradient_and_collapsed_pairs_skip_the_engine(qm_helix):
    sites = np.array(qm_helix.get_sites_cart())
    # nothing in a sound model is inside the wall
    assert rm.contact_wall(sites)[2] is None
    # move an H (atom 1 bonded to N 0) to 0.6 A from its N: wall gradient vs FD
    h = 1
    v = sites[h] - sites[0]
    sites[h] = sites[0] + 0.6 * v / np.linalg.norm(v)
    e, g, (i, j, d) = rm.contact_wall(sites)
    assert {i, j} == {0, h} and d == pytest.approx(0.6) and e > 0
    delta = 1e-5
    for k in range(3):
        p, m = sites.copy(), sites.copy()
        p[h, k] += delta
        m[h, k] -= delta
        fd = (rm.contact_wall(p)[0] - rm.contact_wall(m)[0]) / (2 * delta)
        assert g[h, k] == pytest.approx(fd, rel=1e-5, abs=1e-6)
    # a line-search point with a collapsed pair: no engine call, a worse target
    grm = qm_helix.get_restraints_manager().geometry
    good = qm_helix.get_sites_cart()
    t_good = grm.energies_sites(sites_cart=good, compute_gradients=True).target
    n = grm.n_engine_calls
    sites[h] = sites[0] + 0.2 * v / np.linalg.norm(v)
    es = grm.energies_sites(sites_cart=flex.vec3_double(sites), compute_gradients=True)
    assert grm.n_engine_calls == n
    assert es.target > t_good + 100
    assert np.all(np.isfinite(np.array(es.gradients)))


def test_select_all_keeps_qm_and_subset_gives_library(qm_helix):
    grm = qm_helix.get_restraints_manager().geometry
    n = qm_helix.get_number_of_atoms()
    assert grm.select(flex.bool(n, True)) is grm
    heavy = ~qm_helix.get_hd_selection()
    assert not isinstance(grm.select(heavy), rm.QMRestraintsManager)


def test_selection_gradient_matches_finite_difference(helix):
    model = process_model(helix, grm_normalization=False)
    rm.setup_restraints(model, qm_params(selection="resseq 90:93"))
    grm = model.get_restraints_manager().geometry
    region = grm.evaluator.region
    assert len(region.caps) == 2
    sites = model.get_sites_cart()
    g = np.array(grm.energies_sites(sites_cart=sites, compute_gradients=True).gradients)
    # a region atom, the real atom behind a cap, a library-only atom
    atoms = [int(region.atoms[0]), region.caps[0].outer, 0]
    fd = central_difference(grm, sites, atoms)
    an = g[atoms].ravel()
    assert np.linalg.norm(fd - an) / np.linalg.norm(an) < 1e-3


def test_selection_removes_library_terms_inside_region(helix):
    model = process_model(helix, grm_normalization=False)
    std = model.get_restraints_manager().geometry
    rm.setup_restraints(model, qm_params(selection="resseq 90:93"))
    grm = model.get_restraints_manager().geometry
    sites = model.get_sites_cart()
    es = grm.energies_sites(sites_cart=sites)
    inner = std.select(iselection=flex.size_t(list(map(int, grm.region_atoms))))
    e_inner = inner.energies_sites(sites_cart=sites.select(
        flex.size_t(list(map(int, grm.region_atoms))))).residual_sum
    e_lib = std.energies_sites(sites_cart=sites).residual_sum
    assert es.residual_sum == pytest.approx(e_lib - e_inner + es.qm_target)


LIGAND = """\
HETATM 9001  C1  ZZQ L   1      10.000  10.500  24.000  1.00 80.00           C
HETATM 9002  O1  ZZQ L   1      11.400  10.500  24.000  1.00 80.00           O
HETATM 9003  H1  ZZQ L   1       9.640  11.520  24.000  1.00 80.00           H
HETATM 9004  H2  ZZQ L   1       9.640   9.990  24.880  1.00 80.00           H
HETATM 9005  H3  ZZQ L   1       9.640   9.990  23.120  1.00 80.00           H
HETATM 9006  HO  ZZQ L   1      11.720   9.600  24.000  1.00 80.00           H
"""


def test_ligand_without_dictionary_in_qm_selection(helix_pdb, tmp_path):
    lines = [l for l in open(helix_pdb) if not l.startswith(("END", "TER"))]
    path = tmp_path / "helix_ligand.pdb"
    path.write_text("".join(lines) + LIGAND + "END\n")
    with pytest.raises(Sorry, match="ZZQ"):
        process_model(str(path))
    model = process_model(str(path), stop_for_unknowns=False, grm_normalization=False)
    rm.check_unrestrained_residues(model, "resname ZZQ or resseq 95:99")
    with pytest.raises(Sorry, match="ZZQ"):
        rm.check_unrestrained_residues(model, "resseq 95:99")
    rm.setup_restraints(model, qm_params(selection="resname ZZQ or resseq 95:99"))
    grm = model.get_restraints_manager().geometry
    es = grm.energies_sites(sites_cart=model.get_sites_cart(), compute_gradients=True)
    g = np.array(es.gradients)
    assert g.shape == (100, 3) and np.all(np.isfinite(g))
    assert np.linalg.norm(g[-6:]) > 0   # the ligand feels the QM energy


def _edited(pdb_path, drop_names=(), tmp_path=None, name="edited.pdb"):
    lines = [l for l in open(pdb_path)
             if not (l.startswith(("ATOM", "HETATM")) and
                     (l[12:16].strip(), int(l[22:26])) in drop_names)]
    path = tmp_path / name
    path.write_text("".join(lines))
    return str(path)


def test_odd_electron_count_is_refused_naming_the_residue(helix_pdb, tmp_path):
    path = _edited(helix_pdb, drop_names={("H", 93)}, tmp_path=tmp_path)
    model = process_model(path, grm_normalization=False)
    with pytest.raises(Sorry, match=r"odd number of electrons.*GLY 93.*multiplicity=2"):
        rm.setup_restraints(model, qm_params(check_hydrogens=False))


def test_even_electrons_with_doublet_is_refused(helix):
    model = process_model(helix, grm_normalization=False)
    with pytest.raises(Sorry, match="Multiplicity 2 is impossible"):
        rm.setup_restraints(model, qm_params(multiplicity=2))


def test_missing_hydrogens_are_refused_with_fix(helix_no_ha_pdb):
    model = process_model(helix_no_ha_pdb, grm_normalization=False)
    with pytest.raises(Sorry, match=r"lack some.*GLY 88.*qr_phenix.prepare"):
        rm.setup_restraints(model, qm_params())


def test_charges_from_protonation_states(helix_pdb, tmp_path):
    # deprotonate the C-terminus (drop HXT)
    lines = [l for l in open(helix_pdb) if " HXT " not in l]
    h = iotbx.pdb.input(lines=lines, source_info=None).construct_hierarchy()
    with pytest.raises(Sorry):   # one H fewer: odd electrons
        chemistry.assign_charge_and_multiplicity(h, charge=0)
    res = chemistry.assign_charge_and_multiplicity(h)
    assert res.charge == -1 and res.multiplicity == 1
    assert any("C-terminus" in r.reason for r in res.charged_residues)


def test_other_cctbx_programs_include_the_scope(helix):
    """A cctbx program offers QM restraints by including one PHIL scope."""
    import iotbx.phil
    master = iotbx.phil.parse("""
include scope qr_phenix.restraints_manager.master_phil_str
my_tool { cycles = 3 \n .type = int }
""", process_includes=True)
    user = iotbx.phil.parse('qm_restraints.restraints=qm\nqm_restraints.engine=gfn2\n'
                            'qm_restraints.selection="resseq 95:99"')
    params = master.fetch(source=user).extract()
    assert params.qm_restraints.restraints == "qm"
    model = process_model(helix, grm_normalization=False)
    grm = rm.setup_restraints(model, params.qm_restraints)
    assert isinstance(grm, rm.QMRestraintsManager) and len(grm.region_atoms) < 94
    # the default leaves the library restraints in place
    default = master.extract().qm_restraints
    model2 = process_model(helix, grm_normalization=False)
    assert not isinstance(rm.setup_restraints(model2, default), rm.QMRestraintsManager)


def test_default_solvent_is_implicit_water(helix_pdb):
    from libtbx import Auto
    energies = {}
    for solvent in (Auto, None):
        model = process_model(helix_pdb, grm_normalization=False)
        rm.setup_restraints(model, qm_params(solvent=Auto if solvent is Auto else None),
                            log=None)
        es = model.get_restraints_manager().geometry.energies_sites(
            sites_cart=model.get_sites_cart())
        energies[solvent] = es.qm_energy
    # ALPB water solvation of the neutral helix: tens of kcal/mol
    assert energies[Auto] < energies[None] - 10
    assert rm.phil_scope.extract().qm_restraints.engine_options.solvent is Auto

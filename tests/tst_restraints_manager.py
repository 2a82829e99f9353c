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
def peptide():
    """ALA-VAL-LYS-VAL-ALA with all H (77 atoms, charge +1), 40 A P1 box."""
    from paths import PEPTIDE_H_PDB
    return process_model(str(PEPTIDE_H_PDB), grm_normalization=False)


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
    rm.setup_restraints(model, qm_params(selection="resname ZZQ"))
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


def test_other_cctbx_programs_include_the_scope(peptide):
    """A cctbx program offers QM restraints by including one PHIL scope."""
    import iotbx.phil
    master = iotbx.phil.parse("""
include scope qr_phenix.restraints_manager.master_phil_str
my_tool { cycles = 3 \n .type = int }
""", process_includes=True)
    user = iotbx.phil.parse('qm_restraints.restraints=qm\nqm_restraints.engine=gfn2\n'
                            'qm_restraints.selection="resseq 32 and sidechain and not element H"')
    params = master.fetch(source=user).extract()
    assert params.qm_restraints.restraints == "qm"
    model = process_model(peptide, grm_normalization=False)
    grm = rm.setup_restraints(model, params.qm_restraints)
    assert isinstance(grm, rm.QMRestraintsManager) and len(grm.region_atoms) < 77
    # the default leaves the library restraints in place
    default = master.extract().qm_restraints
    model2 = process_model(peptide, grm_normalization=False)
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


# --- selection boundaries and the energy expression (module doc) ------------------

LYS_SIDE_CHAIN = "resseq 32 and sidechain and not element H"   # cut at CA-CB


def _index(model, resseq, name):
    for a in model.get_hierarchy().atoms():
        if a.parent().parent().resseq_as_int() == resseq and a.name.strip() == name:
            return a.i_seq
    raise KeyError((resseq, name))


def test_selection_across_a_peptide_bond_is_refused(helix):
    """Poly-Gly: no bond between sp3 carbons anywhere, chain ends 5+ bonds away."""
    model = process_model(helix, grm_normalization=False)
    with pytest.raises(Sorry) as e:
        rm.setup_restraints(model, qm_params(selection="resseq 92:94"))
    message = str(e.value)
    assert "\n" not in message
    assert "A GLY 92 N - A GLY 91 C" in message and "sp3 carbons" in message


def test_selection_cut_moves_to_a_bond_between_sp3_carbons(peptide):
    from io import StringIO
    model = process_model(peptide, grm_normalization=False)
    log = StringIO()
    rm.setup_restraints(model, qm_params(selection="resseq 32 and name NZ"), log=log)
    grm = model.get_restraints_manager().geometry
    # the CE-NZ cut (C-N) moved to CD-CE: CE and its H joined, capped at CD
    names = {model.get_hierarchy().atoms()[int(i)].name.strip() for i in grm.region_atoms}
    assert names == {"NZ", "HZ1", "HZ2", "HZ3", "CE", "HE2", "HE3"}
    assert [(c.inner, c.outer) for c in grm.caps] == [
        (_index(model, 32, "CE"), _index(model, 32, "CD"))]
    assert "A LYS 32: CE HE2 HE3" in log.getvalue()


def test_library_terms_through_the_cap_are_counted_once(peptide):
    """Lys 32 side chain in QM, cut at CA-CB (link atom CA).  The target is
    E_lib(model) - E_lib(inside R) - E_lib(angles/dihedrals CA-CB-...) + E_QM,
    with N-CA-CB, N-CA-CB-CG, the CA-CB bond and the chirality at CA left to
    the library.  Value and gradient against that expression, written out
    here from per-term cctbx residuals and a direct GFN2 call."""
    model = process_model(peptide, grm_normalization=False)
    std = model.get_restraints_manager().geometry
    rm.setup_restraints(model, qm_params(selection=LYS_SIDE_CHAIN))
    grm = model.get_restraints_manager().geometry
    ca, cb, n_ = (_index(model, 32, k) for k in ("CA", "CB", "N"))
    region = grm.evaluator.region
    assert [(c.inner, c.outer) for c in region.caps] == [(cb, ca)]
    inside = set(int(i) for i in grm.region_atoms)
    isel = flex.size_t(sorted(inside))
    # the library terms through CA that QM counts (CA at an end, CB next to it)
    angles = [k for k, p in enumerate(std.angle_proxies)
              if p.i_seqs[1] == cb and ca in p.i_seqs]
    dihedrals = [k for k, p in enumerate(std.dihedral_proxies)
                 if ca in (p.i_seqs[0], p.i_seqs[3]) and cb in (p.i_seqs[1], p.i_seqs[2])
                 and set(p.i_seqs) - {ca} <= inside]
    assert len(angles) == 3 and len(dihedrals) >= 1
    assert any(set(p.i_seqs) == {n_, ca, cb} for p in std.angle_proxies)  # stays
    calc = grm.evaluator.calculator
    from qr_phenix.engines.base import energy_and_gradient

    def expression(sites):
        x = flex.vec3_double(sites)
        e = std.energies_sites(sites_cart=x).residual_sum
        e -= std.select(iselection=isel).energies_sites(sites_cart=x.select(isel)).residual_sum
        e -= sum(std.angle_proxies.residuals(sites_cart=x).select(flex.size_t(angles)))
        e -= sum(std.dihedral_proxies.residuals(sites_cart=x).select(flex.size_t(dihedrals)))
        qm = energy_and_gradient(calc, region.symbols, region.positions(sites)).energy
        return e + qm - grm.energy_reference

    sites = np.array(model.get_sites_cart())
    es = grm.energies_sites(sites_cart=flex.vec3_double(sites), compute_gradients=True)
    assert es.target == pytest.approx(expression(sites), abs=1e-6)
    g = np.array(es.gradients)
    delta = 1e-3
    for i in (ca, cb, n_, _index(model, 32, "NZ")):
        for k in range(3):
            plus, minus = sites.copy(), sites.copy()
            plus[i, k] += delta
            minus[i, k] -= delta
            fd = (expression(plus) - expression(minus)) / (2 * delta)
            assert g[i, k] == pytest.approx(fd, rel=2e-3, abs=2e-3)


def test_whole_model_restrains_contacts_with_symmetry_mates(peptide, tmp_path):
    """The peptide in a 9.5 A cell along x touches its own copy (1.98 A H...H):
    the library's symmetry contacts stay in the target and push the atoms
    apart; inside the model nothing is counted besides QM."""
    from paths import PEPTIDE_H_PDB
    lines = open(PEPTIDE_H_PDB).read().splitlines(True)
    small = tmp_path / "small_cell.pdb"
    small.write_text("".join(
        "CRYST1    9.500   40.000   40.000  90.00  90.00  90.00 P 1\n"
        if l.startswith("CRYST1") else l for l in lines))
    models = {}
    for name, path in (("box", str(PEPTIDE_H_PDB)), ("small", str(small))):
        models[name] = process_model(path, grm_normalization=False)
        rm.setup_restraints(models[name], qm_params())
    results = {}
    for name, model in models.items():
        grm = model.get_restraints_manager().geometry
        results[name] = grm.energies_sites(sites_cart=model.get_sites_cart(),
                                           compute_gradients=True)
    # box: QM alone (no library term of the model counted a second time)
    assert results["box"].target == pytest.approx(results["box"].qm_target, abs=1e-6)
    # small cell: QM plus the library's nonbonded contacts with the mates
    from cctbx import geometry_restraints
    only_nonbonded = geometry_restraints.flags.flags(nonbonded=True)
    std = {k: m.get_restraints_manager().geometry.standard for k, m in models.items()}
    sites = models["small"].get_sites_cart()
    contacts = (std["small"].energies_sites(sites_cart=sites, flags=only_nonbonded).residual_sum
                - std["box"].energies_sites(sites_cart=sites, flags=only_nonbonded).residual_sum)
    assert contacts > 0.1
    small_es = results["small"]
    assert small_es.target - small_es.qm_target == pytest.approx(contacts, rel=1e-6)
    # the restraint gradient (small minus box: the QM part is the same) pushes
    # the closest pair, atom i and atom j of the copy one cell along x, apart
    g = np.array(small_es.gradients) - np.array(results["box"].gradients)
    xyz = np.array(sites)
    mate = xyz + np.array([9.5, 0, 0])
    d = np.linalg.norm(xyz[:, None] - mate[None], axis=2)
    i, j = np.unravel_index(d.argmin(), d.shape)
    assert d[i, j] == pytest.approx(1.98, abs=0.01)
    assert np.dot(g[i], xyz[i] - mate[j]) < 0   # energy falls as i moves away
    assert np.dot(g[j], mate[j] - xyz[i]) < 0
    grm = models["small"].get_restraints_manager().geometry
    fd = central_difference(grm, sites, [int(i)])
    assert np.linalg.norm(fd - g[i] - np.array(results["box"].gradients)[i]) \
        / np.linalg.norm(fd) < 1e-3


def test_replaced_terms_follow_the_documented_rule(peptide):
    """Lys 32 side chain, cap on CB toward CA: which library terms QM counts."""
    model = process_model(peptide, grm_normalization=False)
    std = model.get_restraints_manager().geometry
    rm.setup_restraints(model, qm_params(selection=LYS_SIDE_CHAIN))
    grm = model.get_restraints_manager().geometry
    replaced = rm.ReplacedProxies(std, model.get_sites_cart(), grm.region_atoms, grm.caps)
    at = {k: _index(model, 32, k) for k in ("N", "CA", "C", "CB", "CG", "CD", "HB2")}

    def has(proxies, *names):
        want = {at[k] for k in names}
        return any(set(p.i_seqs) == want for p in proxies)

    for proxies, names in ((std.angle_proxies, ("N", "CA", "CB")),
                           (std.dihedral_proxies, ("N", "CA", "CB", "CG")),
                           (std.chirality_proxies, ("CA", "N", "C", "CB"))):
        assert has(proxies, *names)                            # in the library
    assert not has(replaced.bond, "CA", "CB")                 # the cut bond
    assert has(replaced.bond, "CB", "CG")
    assert has(replaced.angle, "CA", "CB", "CG")              # X-A-B: the cap's angle
    assert has(replaced.angle, "CA", "CB", "HB2")
    assert not has(replaced.angle, "N", "CA", "CB")           # vertex on the link atom
    assert has(replaced.dihedral, "CA", "CB", "CG", "CD")
    assert not has(replaced.dihedral, "N", "CA", "CB", "CG")  # axis through the link atom
    assert not has(replaced.chirality, "CA", "N", "C", "CB")  # chiral centre = link atom


class _Walls:
    """The helix under QM restraints with one contact-wall option on and off
    (the other options as given); `extra(sites)` is what the option adds to
    the target, `squeezed(i, j, d)` moves atom i to d A of atom j."""

    def __init__(self, helix, option, **others):
        self.models = {}
        for on in (False, True):
            self.models[on] = process_model(helix, grm_normalization=False)
            rm.setup_restraints(self.models[on], qm_params(**{option: on}, **others))
        self.atoms = list(self.models[True].get_hierarchy().atoms())
        self.xyz = np.array(self.models[True].get_sites_cart())
        self.first = min(a.parent().parent().resseq_as_int() for a in self.atoms)
        self.grm = self.models[True].get_restraints_manager().geometry

    def index(self, residue, name):
        resseq = self.first + residue
        return next(k for k, a in enumerate(self.atoms) if a.name.strip() == name
                    and a.parent().parent().resseq_as_int() == resseq)

    def squeezed(self, i, j, d):
        s = self.xyz.copy()
        v = s[i] - s[j]
        s[i] = s[j] + v / np.linalg.norm(v) * d
        return flex.vec3_double(s)

    def extra(self, sites):
        t = {on: self.models[on].get_restraints_manager().geometry.energies_sites(
            sites_cart=sites) for on in (False, True)}
        return t[True].target - t[False].target

    def gradient_error(self, i, j, d):
        """|FD - analytic| / |analytic| on atoms i, j with i squeezed to d A."""
        sites = self.squeezed(i, j, d)
        g = np.array(self.grm.energies_sites(sites_cart=sites, compute_gradients=True).gradients)
        fd = central_difference(self.grm, sites, [i, j])
        an = g[[i, j]].ravel()
        return np.linalg.norm(fd - an) / np.linalg.norm(an)


def test_oxygen_carbon_repulsion_acts_on_squeezed_carbonyl_contacts_only(helix):
    """qm_restraints.oxygen_carbon_repulsion: a carbonyl O pushed to 2.6 A of
    the next residue's C (GFN2 packs these to 2.6-2.7 A; probe counts a clash
    below 2.75 A) costs energy on top of QM, the helix's own O(i)...C(i+1)
    and an H...H pair at 1.6 A do not; off, the term is gone; the gradient
    matches finite differences."""
    w = _Walls(helix, "oxygen_carbon_repulsion", hydrogen_contact_repulsion=False)
    off = w.models[False].get_restraints_manager().geometry.energies_sites(
        sites_cart=w.models[False].get_sites_cart())
    assert off.contact_repulsion == 0
    o, c = w.index(1, "O"), w.index(2, "C")
    assert np.linalg.norm(w.xyz[o] - w.xyz[c]) > 2.85
    assert w.extra(w.models[True].get_sites_cart()) == pytest.approx(0, abs=1e-9)
    assert w.extra(w.squeezed(o, c, 2.6)) > 1.0
    # gentler squeeze, smaller penalty: a wall, not a constant
    assert 0 < w.extra(w.squeezed(o, c, 2.75)) < w.extra(w.squeezed(o, c, 2.6))
    h1, h2 = w.index(1, "HA2"), w.index(2, "H")
    assert w.extra(w.squeezed(h1, h2, 1.6)) == pytest.approx(0, abs=1e-9)
    assert w.gradient_error(o, c, 2.6) < 1e-3


def test_hydrogen_contact_repulsion_walls_h_h_and_ch_o_but_not_h_bonds(helix):
    """qm_restraints.hydrogen_contact_repulsion: an H...H pair pushed to 1.6
    A and a C-H...O pair to 2.1 A (GFN2 lets the X-ray term make both; probe
    counts them as clashes) cost energy on top of QM; a backbone N-H...O=C
    pair at 1.75 A (an H-bond, polar H) and a carbonyl O...C at 2.6 A (the
    other wall's) do not; the gradient matches finite differences."""
    w = _Walls(helix, "hydrogen_contact_repulsion", oxygen_carbon_repulsion=False)
    h1, h2 = w.index(1, "HA2"), w.index(2, "H")           # not 1-4: HA2-CA-C-N-H
    assert np.linalg.norm(w.xyz[h1] - w.xyz[h2]) > 2.0
    assert w.extra(w.squeezed(h1, h2, 1.6)) > 1.0
    assert 0 < w.extra(w.squeezed(h1, h2, 1.85)) < w.extra(w.squeezed(h1, h2, 1.6))
    ha, o = w.index(5, "HA2"), w.index(1, "O")
    assert w.extra(w.squeezed(ha, o, 2.1)) > 1.0
    hn = w.index(5, "H")                                  # the helix's i+4 H-bond
    assert w.extra(w.squeezed(hn, o, 1.75)) == pytest.approx(
        w.extra(w.models[True].get_sites_cart()), abs=1e-9)
    assert w.extra(w.squeezed(o, w.index(2, "C"), 2.6)) == pytest.approx(
        w.extra(w.models[True].get_sites_cart()), abs=1e-9)
    assert w.gradient_error(h1, h2, 1.6) < 1e-3
    assert w.gradient_error(ha, o, 2.1) < 1e-3

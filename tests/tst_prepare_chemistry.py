"""Preparation and charge rules: chain breaks, determinism, metal sites,
partial QM selections, ligands without hydrogens, special positions."""

import numpy as np
import pytest

import iotbx.pdb
from libtbx.utils import null_out

from qr_phenix import chemistry

from paths import TEST_DATA as DATA

#: 1us0 A26-35 (QVTEAVKVAI), heavy atoms, first conformer
PEPTIDE = DATA / "1us0_A26_35.pdb"


def _hierarchy(text):
    return iotbx.pdb.input(source_info=None, lines=text).construct_hierarchy()


def _prepare(h, crystal_symmetry=None):
    pytest.importorskip("pdbfixer", reason="requires pdbfixer (pip install pdbfixer openmm)")
    from qr_phenix.preparation import prepare_hierarchy
    return prepare_hierarchy(h, crystal_symmetry=crystal_symmetry, log=null_out())


def _with_gap():
    """The peptide without ALA 30 and VAL 31: GLU 29 and LYS 32 end at a gap."""
    h = iotbx.pdb.input(str(PEPTIDE)).construct_hierarchy()
    return h.select(h.atom_selection_cache().selection("not resseq 30:31"))


def _open_valences(h):
    """Heavy atoms with fewer bonded neighbours than their element needs
    (C 3, N 3, O 1, S 1)."""
    from qr_phenix.qm_region import covalent_bonds
    els = [chemistry._element(a) for a in h.atoms()]
    xyz = np.array(h.atoms().extract_xyz())
    count = np.zeros(len(els), dtype=int)
    for i, j in covalent_bonds(els, xyz):
        count[i] += 1
        count[j] += 1
    need = {"C": 3, "N": 3, "O": 1, "S": 1}
    return [h.atoms()[i].id_str() for i, e in enumerate(els)
            if e in need and count[i] < need[e]]


# --- chain breaks --------------------------------------------------------------------

@pytest.fixture(scope="module")
def gap_prepared():
    h = _with_gap()
    for a in h.atoms():  # ANISOU records between the residues must not hide the gap
        a.set_uij((0.05, 0.06, 0.07, 0.0, 0.0, 0.0))
    return _prepare(h)


def test_chain_break_ends_are_capped_and_neutral(gap_prepared):
    full, full_report = _prepare(iotbx.pdb.input(str(PEPTIDE)).construct_hierarchy())
    h, report = gap_prepared
    # ALA and VAL carry no charge: the gap changes nothing
    assert report.total_charge == full_report.total_charge == 0
    assert report.n_electrons % 2 == 0
    assert len(report.chain_breaks) == 1
    assert "A GLU 29 HC" in report.chain_breaks[0] and "A LYS 32 NH2" in report.chain_breaks[0]
    names = {(rg.resseq.strip(), a.name.strip()) for rg in h.residue_groups()
             for a in rg.atoms()}
    assert ("29", "HC") in names and ("29", "OXT") not in names
    assert ("32", "H2") in names and ("32", "H3") not in names
    # the cap is on the line of the cut peptide bond, at the C-H distance
    xyz = {(rg.resseq.strip(), a.name.strip()): np.array(a.xyz)
           for rg in h.residue_groups() for a in rg.atoms()}
    assert np.linalg.norm(xyz["29", "HC"] - xyz["29", "C"]) == pytest.approx(1.09, abs=0.01)
    assert _open_valences(h) == []
    assert _open_valences(_with_gap()) != []  # the check sees open ends
    from qr_phenix.chemical_groups import model_units
    charges = {u.label: u.charge for u in model_units(h)}
    assert charges["A GLU 29"] == -1 and charges["A LYS 32"] == 1


def test_capped_chain_break_passes_the_library_and_the_qm_checks(gap_prepared, tmp_path):
    from qr_phenix.monomer_library import process_model
    h, report = gap_prepared
    path = tmp_path / "gap.pdb"
    from cctbx import crystal
    cs = crystal.symmetry(unit_cell=(50, 50, 50, 90, 90, 90), space_group_symbol="P1")
    path.write_text(h.as_pdb_string(crystal_symmetry=cs))
    model = process_model(str(path))
    assert model.get_number_of_atoms() == h.atoms_size()
    # what the engine is given: hydrogens complete, closed shell, neutral
    chemistry.check_hydrogens(model.get_hierarchy())
    charges = chemistry.assign_charge_and_multiplicity(model.get_hierarchy())
    assert charges.charge == 0 and charges.multiplicity == 1


def test_uncapped_chain_break_is_refused_not_charged():
    """A gap end as the old prepare left it (N with one H, C=O alone) is an
    open valence: the hydrogen check names it, the charge rule adds nothing."""
    h, _ = _prepare(_with_gap())
    for rg in h.residue_groups():
        for a in list(rg.atoms()):
            if (rg.resseq.strip(), a.name.strip()) in (("29", "HC"), ("32", "H2")):
                rg.atom_groups()[0].remove_atom(a)
    h.atoms().reset_i_seq()
    from libtbx.utils import Sorry
    with pytest.raises(Sorry, match="open valence at terminal (N|C)") as e:
        chemistry.check_hydrogens(h)
    assert "A GLU 29" in str(e.value) and "A LYS 32" in str(e.value)
    res = {r.label: r for r in chemistry.residues(h)}
    assert chemistry.residue_charge(res["A LYS 32"], list(res.values())).charge == 1


def test_a_residue_alone_between_two_gaps_is_capped_on_both_sides():
    """OpenMM has no template for a lone amino acid: the chain is not cut
    there, the caps are built on the mid-chain residue."""
    h0 = iotbx.pdb.input(str(PEPTIDE)).construct_hierarchy()
    h0 = h0.select(h0.atom_selection_cache().selection("not (resseq 28 or resseq 30:31)"))
    h, report = _prepare(h0)
    assert len(report.chain_breaks) == 2
    assert report.total_charge == 0 and report.n_electrons % 2 == 0
    names = {a.name.strip() for rg in h.residue_groups() if rg.resseq.strip() == "29"
             for a in rg.atoms()}
    assert {"H", "H2", "HC"} <= names
    assert _open_valences(h) == []
    chemistry.check_hydrogens(h)


# --- charges: metal thiolates, partial selections, ligands without H --------------------

CYS = """\
ATOM      1  N   CYS A  44       9.703  -4.829  26.199  1.00  2.61           N
ATOM      2  CA  CYS A  44       9.297  -6.100  25.640  1.00  2.63           C
ATOM      3  C   CYS A  44       9.193  -5.995  24.124  1.00  2.53           C
ATOM      4  O   CYS A  44       9.191  -4.891  23.556  1.00  2.85           O
ATOM      5  CB  CYS A  44      10.296  -7.173  26.056  1.00  3.04           C
ATOM      6  SG  CYS A  44       9.897  -8.792  25.385  1.00  3.72           S
ATOM      7  N   ALA A  45       9.016  -7.139  23.470  1.00  2.70           N
ATOM      8  CA  ALA A  45       8.620  -7.119  22.071  1.00  2.66           C
ATOM      9  C   ALA A  45       8.096  -8.492  21.699  1.00  2.76           C
ATOM     10  O   ALA A  45       8.623  -9.512  22.111  1.00  3.09           O
ATOM     11  CB  ALA A  45       9.779  -6.798  21.129  1.00  3.02           C
"""


def _zinc_site():
    """Four Cys-Ala (chains A-D, zwitterions) with SG 2.33 A from a Zn at the
    origin, tetrahedral."""
    src = _hierarchy(CYS)
    xyz = np.array(src.atoms().extract_xyz())
    sg = xyz[5]
    centre = xyz[:6].mean(axis=0)
    out = "CRYST1   40.000   40.000   40.000  90.00  90.00  90.00 P 1\n"
    serial = 1
    for k, (chain, t) in enumerate(zip("ABCD", [(1, 1, 1), (1, -1, -1), (-1, 1, -1),
                                                 (-1, -1, 1)])):
        t = np.array(t, dtype=float) / np.sqrt(3.0)
        v = centre - sg
        v /= np.linalg.norm(v)
        # rotation taking v onto t (Rodrigues)
        axis = np.cross(v, t)
        s, c = np.linalg.norm(axis), float(np.dot(v, t))
        kx = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]],
                       [-axis[1], axis[0], 0]])
        rot = np.eye(3) + kx + kx @ kx * ((1 - c) / s ** 2)
        new = (xyz - sg) @ rot.T + 2.33 * t
        for a, x in zip(src.atoms(), new):
            rg = a.parent().parent()
            out += "ATOM  %5d  %-3s %s %s%4s    %8.3f%8.3f%8.3f  1.00 10.00          %2s\n" % (
                serial, a.name.strip(), a.parent().resname, chain, rg.resseq.strip(),
                x[0], x[1], x[2], a.element.strip())
            serial += 1
    out += ("HETATM%5d ZN    ZN E   1       0.000   0.000   0.000  1.00 10.00          ZN\n"
            % serial)
    pdb_inp = iotbx.pdb.input(source_info=None, lines=out)
    return pdb_inp.construct_hierarchy(), pdb_inp.crystal_symmetry()


def test_zinc_tetrathiolate_site_is_minus_two():
    h0, cs = _zinc_site()
    h, report = _prepare(h0, cs)
    assert len(report.thiolates) == 4 and "E ZN 1" in report.thiolates[0]
    assert not any(a.name.strip() == "HG" for a in h.atoms())
    assert report.total_charge == -2  # Zn2+ and four thiolates; zwitterions neutral
    q = chemistry.assign_charge_and_multiplicity(h)
    assert q.charge == -2 and q.multiplicity == 1
    sg = {r.label: chemistry.residue_charge(r, chemistry.residues(h)).parts
          for r in chemistry.residues(h) if r.resname == "CYS"}
    assert all(p.get("side_chain") == -1 for p in sg.values())


LYS_PEPTIDE = DATA / "1us0_A60_69.pdb"   # EKLREQVVKR


@pytest.fixture(scope="module")
def lys_peptide():
    h, report = _prepare(iotbx.pdb.input(str(LYS_PEPTIDE)).construct_hierarchy())
    h.atoms().reset_i_seq()
    return h


def _region_charge(h, selection):
    from qr_phenix.qm_region import build_region, covalent_bonds
    els = [chemistry._element(a) for a in h.atoms()]
    sel = np.array(h.atom_selection_cache().selection(selection))
    region = build_region(sel, els, covalent_bonds(els, np.array(h.atoms().extract_xyz())))
    selected = np.zeros(len(els), dtype=bool)
    selected[region.atoms] = True
    return chemistry.assign_charge_and_multiplicity(
        h, selected, extra_elements=["H"] * len(region.caps))


def test_selection_through_residues_counts_only_the_groups_inside(lys_peptide):
    h = lys_peptide
    both = "(resseq 61 or resseq 68)"
    assert _region_charge(h, both).charge == 2
    # backbone of the two Lys: the NH3+ groups are outside
    backbone = _region_charge(h, both + " and (name N or name CA or name C or name O)")
    assert backbone.charge == 0 and backbone.charged_residues == []
    # the amine alone (capped at NZ-CE) keeps its charge
    assert _region_charge(h, "resseq 61 and name NZ").charge == 1


def test_ligands_without_hydrogen_by_nature_are_accepted():
    from libtbx.utils import Sorry
    co = ("HETATM    1  C   CMO A   1       0.000   0.000   0.000  1.00 10.00           C\n"
          "HETATM    2  O   CMO A   1       1.128   0.000   0.000  1.00 10.00           O\n")
    chemistry.check_hydrogens(_hierarchy(co))
    for name in ("CYN", "SCN", "CO3"):
        assert chemistry.hydrogen_free(name)
    # an acetate without its methyl H is still refused
    act = ("HETATM    1  C   ACT A   1       0.000   0.000   0.000  1.00 10.00           C\n"
           "HETATM    2  O   ACT A   1       0.700   1.100   0.000  1.00 10.00           O\n"
           "HETATM    3  OXT ACT A   1       0.700  -1.100   0.000  1.00 10.00           O\n"
           "HETATM    4  CH3 ACT A   1      -1.500   0.000   0.000  1.00 10.00           C\n")
    with pytest.raises(Sorry, match="ACT 1 .no hydrogens"):
        chemistry.check_hydrogens(_hierarchy(act))
    h, report = _prepare(_hierarchy(co))
    assert report.total_charge == 0 and report.n_hydrogens == 0


# --- symmetry images -------------------------------------------------------------------

def test_water_on_a_special_position_gives_one_image():
    """P4, water O on the 2-fold at (1/2, 0, z): the 2-fold maps it onto itself
    (its H do not follow), and 4+ and 4- give the same copies, at (0, +-1/2)
    and (1, +-1/2), 8.5 A away: each copy once, nothing on the water itself."""
    from cctbx import crystal
    from qr_phenix.chemical_groups import Unit, symmetry_images
    cs = crystal.symmetry(unit_cell=(12, 12, 30, 90, 90, 90), space_group_symbol="P4")
    sites = np.array([[6.0, 0.0, 5.0], [6.6, 0.7, 5.3], [5.3, 0.5, 4.8]])  # O, H, H
    units = [Unit(label="W HOH 1", atoms=np.arange(3), charge=0)]
    images, image_units = symmetry_images(sites, units, cs, 9.5,
                                          heavy=[True, False, False])
    assert len(image_units) == 4
    o = images.sites(sites)[::3]
    frac = {tuple(np.round(x / 12.0, 3)[:2]) for x in o}
    assert frac == {(0.0, 0.5), (0.0, -0.5), (1.0, 0.5), (1.0, -0.5)}
    all_sites = np.vstack([sites, images.sites(sites)])
    d = np.linalg.norm(all_sites[:, None] - all_sites[None], axis=2)
    assert d[np.triu_indices(len(all_sites), 1)].min() > 0.5

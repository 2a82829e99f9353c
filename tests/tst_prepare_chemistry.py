"""Preparation and charge rules: chain breaks, determinism, metal sites,
partial QM selections, ligands without hydrogens, special positions."""

from pathlib import Path

import numpy as np
import pytest

import iotbx.pdb
from libtbx.utils import null_out

from qr_phenix import chemistry

DATA = Path(__file__).resolve().parent / "data"
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
    from qr_phenix.fragmentation.partition import model_units
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


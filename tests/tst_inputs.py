"""Input handling of qr.prepare / qr.refine: ligand restraint dictionaries,
bad model files, element columns.  Real cctbx; small data made here (real
entries from ../shared only where named, skipped when missing)."""

import numpy as np
import pytest
from libtbx.utils import Sorry, null_out

from paths import ENTRIES, shared

def entry_file(name):
    return shared(ENTRIES / name)

# --- a made-up ligand (ethanol named QRX) and its hand-written dictionary ----

QRX_ATOMS = [  # name, element, energy type, ideal xyz
    ("C1", "C", "CH3", (0.000, 0.000, 0.000)),
    ("C2", "C", "CH2", (1.523, 0.000, 0.000)),
    ("O1", "O", "OH1", (2.000, 1.348, 0.000)),
    ("H11", "H", "HCH3", (-0.363, 1.028, 0.000)),
    ("H12", "H", "HCH3", (-0.363, -0.514, 0.890)),
    ("H13", "H", "HCH3", (-0.363, -0.514, -0.890)),
    ("H21", "H", "HCH2", (1.886, -0.514, 0.890)),
    ("H22", "H", "HCH2", (1.886, -0.514, -0.890)),
    ("HO1", "H", "HOH1", (2.970, 1.300, 0.000)),
]
QRX_BONDS = [("C1", "C2", 1.523), ("C2", "O1", 1.430), ("C1", "H11", 1.09),
             ("C1", "H12", 1.09), ("C1", "H13", 1.09), ("C2", "H21", 1.09),
             ("C2", "H22", 1.09), ("O1", "HO1", 0.97)]

def qrx_cif_text():
    lines = ["data_comp_list", "loop_", "_chem_comp.id", "_chem_comp.three_letter_code",
             "_chem_comp.name", "_chem_comp.group", "_chem_comp.number_atoms_all",
             "_chem_comp.number_atoms_nh", "_chem_comp.desc_level",
             "QRX QRX 'made-up ethanol' ligand 9 3 .", "", "data_comp_QRX", "loop_"]
    lines += ["_chem_comp_atom.%s" % k for k in (
        "comp_id", "atom_id", "type_symbol", "type_energy", "charge", "x", "y", "z")]
    lines += ["QRX %s %s %s 0 %.3f %.3f %.3f" % ((n, e, t) + xyz) for n, e, t, xyz in QRX_ATOMS]
    lines += ["", "loop_"] + ["_chem_comp_bond.%s" % k for k in (
        "comp_id", "atom_id_1", "atom_id_2", "type", "value_dist", "value_dist_esd")]
    lines += ["QRX %s %s single %.3f 0.020" % b for b in QRX_BONDS]
    lines += ["", "loop_"] + ["_chem_comp_angle.%s" % k for k in (
        "comp_id", "atom_id_1", "atom_id_2", "atom_id_3", "value_angle", "value_angle_esd")]
    lines += ["QRX C1 C2 O1 109.5 3.0", "QRX H21 C2 O1 109.5 3.0", "QRX H22 C2 O1 109.5 3.0",
              "QRX C2 O1 HO1 109.5 3.0"]
    return "\n".join(lines) + "\n"

def _rotation(seed=3):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))

def qrx_pdb_text(with_h=False, shift=(6.0, 7.0, 8.0)):
    """QRX rigidly rotated and moved into a 20 A P1 cell."""
    r = _rotation()
    lines = ["CRYST1   20.000   20.000   20.000  90.00  90.00  90.00 P 1"]
    serial = 0
    for name, el, _, xyz in QRX_ATOMS:
        if el == "H" and not with_h:
            continue
        serial += 1
        x, y, z = np.array(xyz) @ r.T + np.array(shift)
        lines.append("HETATM%5d %-4s QRX A   1    %8.3f%8.3f%8.3f  1.00 20.00          %2s"
                     % (serial, name if len(name) == 4 else " " + name, x, y, z, el))
    return "\n".join(lines + ["END"]) + "\n"

@pytest.fixture
def qrx_files(tmp_path):
    pdb = tmp_path / "qrx.pdb"
    pdb.write_text(qrx_pdb_text())
    cif = tmp_path / "qrx.cif"
    cif.write_text(qrx_cif_text())
    return pdb, cif

def _refine_program(args, tmp_path):
    from iotbx.cli_parser import CCTBXParser
    from qr_phenix.programs.refine import Program
    args = [str(a) for a in args] + ["output.prefix=%s" % (tmp_path / "out")]
    parser = CCTBXParser(program_class=Program, logger=null_out())
    parser.parse_args(args)
    program = Program(parser.data_manager, parser.working_phil.extract(),
                      master_phil=parser.master_phil, logger=null_out())
    program.validate()
    return program

def _ligand_bond_proxies(model):
    atoms = model.get_hierarchy().atoms()
    geometry = model.get_restraints_manager().geometry
    proxies = geometry.get_all_bond_proxies(sites_cart=model.get_sites_cart())[0]
    return [p for p in proxies if all(atoms[i].parent().resname == "QRX" for i in p.i_seqs)]

# --- 1. ligand dictionaries ---------------------------------------------------

def test_refine_uses_a_ligand_dictionary_given_on_the_command_line(library, qrx_files,
                                                                  tmp_path):
    pdb, cif = qrx_files
    with_cif = _refine_program([pdb, cif, "qm_restraints.restraints=cctbx"], tmp_path)
    model = with_cif._load_model(null_out(), quantum=False)
    assert len(_ligand_bond_proxies(model)) == 2          # C1-C2, C2-O1 (no H in model)
    without = _refine_program([pdb, "qm_restraints.restraints=cctbx"], tmp_path)
    with pytest.raises(Sorry, match="QRX"):
        without._load_model(null_out(), quantum=False)
    # accepting unknown residues (as for QM): processed, but the ligand is unrestrained
    model = without._load_model(null_out(), quantum=True)
    assert _ligand_bond_proxies(model) == []

def test_refine_geometry_run_with_a_ligand_dictionary(library, qrx_files, tmp_path):
    from qr_phenix.command_line import run_checked
    from qr_phenix.programs.refine import Program
    pdb, cif = qrx_files
    results = run_checked(Program, [str(pdb), str(cif), "qm_restraints.restraints=cctbx",
                                    "refinement.macro_cycles=1",
                                    "output.prefix=%s" % (tmp_path / "geo")], logger=null_out())
    assert (tmp_path / "geo.pdb").exists()

def test_prepare_places_the_dictionary_hydrogens_with_their_names(qrx_files, tmp_path):
    from qr_phenix.command_line import run_checked
    from qr_phenix.programs.prepare import Program
    import iotbx.pdb
    pdb, cif = qrx_files
    out = tmp_path / "prepared.pdb"
    results = run_checked(Program, [str(pdb), str(cif), "output.file_name=%s" % out],
                          logger=null_out())
    assert any("dictionary qrx.cif" in c for c in results["report"].ligand_choices)
    h = iotbx.pdb.input(str(out)).construct_hierarchy()
    got = {a.name.strip(): np.array(a.xyz) for a in h.atoms()}
    # the molecule is rigid: every H is where the moved ideal coordinates put it
    # (up to the X-H normalisation of prepare: C-H 1.09, O-H 0.96)
    expected = {n: np.array(xyz) @ _rotation().T + np.array((6.0, 7.0, 8.0))
                for n, _, _, xyz in QRX_ATOMS}
    assert set(got) == set(expected)
    for name in got:
        assert np.linalg.norm(got[name] - expected[name]) < 0.02, name
    assert results["total_charge"] == 0

def test_prepare_without_the_dictionary_refuses_an_unknown_ligand(qrx_files, tmp_path):
    pytest.importorskip("hydride", reason="requires hydride (pip install hydride biotite)")
    from qr_phenix.command_line import run_checked
    from qr_phenix.programs.prepare import Program
    pdb, _ = qrx_files
    with pytest.raises(Sorry, match="QRX"):
        run_checked(Program, [str(pdb), "output.file_name=%s" % (tmp_path / "p.pdb")],
                    logger=null_out())

def test_a_file_of_a_type_the_program_does_not_read_is_named(qrx_files, tmp_path):
    from qr_phenix.command_line import check_input_files
    _, cif = qrx_files
    with pytest.raises(Sorry, match="qrx.cif is a restraint file"):
        check_input_files([str(cif)], ["model", "phil"])

# --- 2. bad model files: one Sorry line each ---------------------------------

def qrx_mtz(path, cell=20.0):
    """F-obs (= |F-calc| of QRX) and free-R flags in a P1 cell, as an MTZ."""
    import iotbx.pdb
    from cctbx import crystal
    text = qrx_pdb_text()
    xrs = iotbx.pdb.input(source_info=None, lines=text).xray_structure_simple(
        crystal_symmetry=crystal.symmetry(unit_cell=(cell,) * 3 + (90,) * 3,
                                          space_group_symbol="P1"))
    f = abs(xrs.structure_factors(d_min=2.0).f_calc())
    flags = f.generate_r_free_flags(fraction=0.1)
    mtz = f.as_mtz_dataset(column_root_label="FOBS")
    mtz.add_miller_array(flags, column_root_label="R-free-flags")
    mtz.mtz_object().write(str(path))
    return path

def _run_refine(args):
    from qr_phenix.command_line import run_checked
    from qr_phenix.programs.refine import Program
    return run_checked(Program, [str(a) for a in args], logger=null_out())

def test_xray_refinement_of_a_model_without_crystal_symmetry(qrx_files, tmp_path):
    pdb, cif = qrx_files
    bare = tmp_path / "nocryst.pdb"
    bare.write_text("".join(l + "\n" for l in pdb.read_text().splitlines()
                            if not l.startswith("CRYST1")))
    mtz = qrx_mtz(tmp_path / "data.mtz")
    with pytest.raises(Sorry, match="no crystal symmetry.*CRYST1.*20.000   20.000"):
        _run_refine([bare, mtz, cif, "qm_restraints.restraints=cctbx",
                     "output.prefix=%s" % (tmp_path / "out")])

def test_xray_refinement_with_a_cell_that_differs_from_the_data(library, qrx_files, tmp_path):
    pdb, cif = qrx_files
    mtz = qrx_mtz(tmp_path / "data.mtz", cell=23.0)
    with pytest.raises(Sorry, match="unit cell of the model .* differs"):
        _run_refine([pdb, mtz, cif, "qm_restraints.restraints=cctbx",
                     "output.prefix=%s" % (tmp_path / "out")])

def _two_models(pdb, path):
    lines = pdb.read_text().splitlines()
    atoms = [l for l in lines if l.startswith(("ATOM", "HETATM"))]
    path.write_text("\n".join([lines[0], "MODEL        1"] + atoms + ["ENDMDL", "MODEL        2"]
                              + atoms + ["ENDMDL", "END"]) + "\n")
    return path

def test_several_models_are_refused_unless_the_first_is_asked_for(library, qrx_files,
                                                                   tmp_path):
    import iotbx.pdb
    pdb, cif = qrx_files
    ensemble = _two_models(pdb, tmp_path / "ensemble.pdb")
    args = [ensemble, cif, "qm_restraints.restraints=cctbx", "refinement.macro_cycles=1",
            "output.prefix=%s" % (tmp_path / "out")]
    with pytest.raises(Sorry, match="has 2 MODELs.*input.first_model_only=True"):
        _run_refine(args)
    _run_refine(args + ["input.first_model_only=True"])
    h = iotbx.pdb.input(str(tmp_path / "out.pdb")).construct_hierarchy()
    assert len(h.models()) == 1 and h.atoms_size() == 3

def test_prepare_several_models(qrx_files, tmp_path):
    import iotbx.pdb
    from qr_phenix.command_line import run_checked
    from qr_phenix.programs.prepare import Program
    pdb, cif = qrx_files
    ensemble = _two_models(pdb, tmp_path / "ensemble.pdb")
    args = [str(ensemble), str(cif), "output.file_name=%s" % (tmp_path / "p.pdb")]
    with pytest.raises(Sorry, match="has 2 MODELs"):
        run_checked(Program, args, logger=null_out())
    run_checked(Program, args + ["input.first_model_only=True"], logger=null_out())
    h = iotbx.pdb.input(str(tmp_path / "p.pdb")).construct_hierarchy()
    assert len(h.models()) == 1 and h.atoms_size() == 9

def test_two_model_files_are_refused(qrx_files, tmp_path):
    from qr_phenix.command_line import run_checked
    from qr_phenix.programs.prepare import Program
    pdb, cif = qrx_files
    other = tmp_path / "other.pdb"
    other.write_text(pdb.read_text())
    with pytest.raises(Sorry, match="More than one model given"):
        _run_refine([pdb, other, "output.prefix=%s" % (tmp_path / "out")])
    with pytest.raises(Sorry, match="More than one model given"):
        run_checked(Program, [str(pdb), str(other)], logger=null_out())

# --- 3. elements of ions with an empty element column ------------------------

IONS = [("CA", "Ca"), ("CL", "Cl"), ("NA", "Na"), ("MG", "Mg"), ("ZN", "Zn"), ("K", "K")]

def ions_pdb_text(aligned):
    """Monatomic ions and a water, element column empty; names in PDB columns
    13-14 (aligned, as cctbx expects for two-letter elements) or 14-15."""
    lines = ["CRYST1   20.000   20.000   20.000  90.00  90.00  90.00 P 1"]
    for i, (name, _) in enumerate(IONS + [("O", "O")]):
        resname = "HOH" if name == "O" else name
        field = ("%-4s" % name) if aligned and len(name) == 2 else (" %-3s" % name)
        lines.append("HETATM%5d %s %3s A%4d    %8.3f%8.3f%8.3f  1.00 20.00"
                     % (i + 1, field, resname, i + 1, 3.0 + 2.5 * i, 5.0, 5.0))
    return "\n".join(lines + ["END"]) + "\n"

@pytest.mark.parametrize("aligned", [True, False])
def test_ions_without_element_column_are_not_typed_by_the_first_letter(aligned):
    import iotbx.pdb
    from qr_phenix import chemistry
    h = iotbx.pdb.input(source_info=None, lines=ions_pdb_text(aligned)).construct_hierarchy()
    assert all(not a.element.strip() for a in h.atoms())
    assert [chemistry._element(a) for a in h.atoms()] == [e for _, e in IONS] + ["O"]
    assert chemistry.n_electrons_neutral([chemistry._element(a) for a in h.atoms()]) == \
        20 + 17 + 11 + 12 + 30 + 19 + 8
    assert chemistry.fill_ion_elements(h) == len(IONS)
    assert [a.element for a in h.atoms()][:len(IONS)] == \
        [e.upper().rjust(2) for _, e in IONS]

def test_alpha_carbons_stay_carbon():
    import iotbx.pdb
    from qr_phenix import chemistry
    text = ("ATOM      1  N   ALA A   1       1.000   1.000   1.000  1.00 20.00\n"
            "ATOM      2  CA  ALA A   1       2.400   1.000   1.000  1.00 20.00\n"
            "ATOM      3  CA  GLY A   2       6.000   1.000   1.000  1.00 20.00\n")
    h = iotbx.pdb.input(source_info=None, lines=text).construct_hierarchy()
    assert [chemistry._element(a) for a in h.atoms()] == ["N", "C", "C"]
    assert chemistry.fill_ion_elements(h) == 0

def test_refine_and_prepare_type_the_ions(library, tmp_path):
    import iotbx.pdb
    from qr_phenix.command_line import run_checked
    from qr_phenix.programs.prepare import Program
    pdb = tmp_path / "ions.pdb"
    pdb.write_text(ions_pdb_text(aligned=False))
    program = _refine_program([pdb, "qm_restraints.restraints=cctbx"], tmp_path)
    model = program._load_model(null_out(), quantum=False)
    types = list(model.get_xray_structure().scatterers().extract_scattering_types())
    assert types == [e for _, e in IONS] + ["O"]
    out = tmp_path / "prepared.pdb"
    run_checked(Program, [str(pdb), "output.file_name=%s" % out, "ligands=keep"],
                logger=null_out())
    h = iotbx.pdb.input(str(out)).construct_hierarchy()
    elements = {a.parent().resname.strip(): a.element.strip() for a in h.atoms()}
    assert all(elements[name] == e.upper() for name, e in IONS)

# --- real entry: 1il5 with its ligand dictionary (DDP) -----------------------

def test_1il5_prepare_and_refine_with_its_dictionary(library, tmp_path):
    import iotbx.cif
    import iotbx.pdb
    from qr_phenix.command_line import run_checked
    from qr_phenix.programs.prepare import Program as Prepare
    pytest.importorskip("pdbfixer", reason="requires pdbfixer (pip install pdbfixer openmm)")
    pdb, mtz, cif = (entry_file("1il5." + ext) for ext in ("pdb", "mtz", "cif"))
    out = tmp_path / "1il5_h.pdb"
    run_checked(Prepare, [pdb, cif, "output.file_name=%s" % out], logger=null_out())
    block = iotbx.cif.reader(file_path=cif).model()["comp_DDP"]
    expected = {n for n, e in zip(block["_chem_comp_atom.atom_id"],
                                  block["_chem_comp_atom.type_symbol"])}
    h = iotbx.pdb.input(str(out)).construct_hierarchy()
    got = {a.name.strip() for a in h.atoms() if a.parent().resname == "DDP"}
    assert got == expected
    results = _run_refine([out, mtz, cif, "qm_restraints.restraints=cctbx",
                           "refinement.macro_cycles=1", "refinement.weight=0.01",
                           "refinement.validation=off", "output.prefix=%s" % (tmp_path / "x1il5")])
    # the refined cycle (the never-worse rule may hand back the start)
    assert results["cycles"][-1]["r_work"] < results["start"]["r_work"]

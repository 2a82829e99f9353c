"""Input handling of qr.prepare / qr.refine: ligand restraint dictionaries,
bad model files, element columns.  Real cctbx; small data made here (real
entries from ../shared only where named, skipped when missing)."""

import os

import numpy as np
import pytest
from libtbx.utils import Sorry, null_out

from paths import ENTRIES, TEST_DATA, shared

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

def test_reflection_symmetry_is_read_without_the_map_readers_and_they_come_back(tmp_path):
    from iotbx import crystal_symmetry_from_any as readers
    from qr_phenix.programs.inputs import reflection_files_not_probed_as_maps
    mtz = qrx_mtz(tmp_path / "data.mtz", cell=23.0)
    saved = readers.from_ccp4_map, readers.from_xplor_map
    with pytest.raises(RuntimeError, match="inside"):
        with reflection_files_not_probed_as_maps():
            assert readers.from_ccp4_map is None and readers.from_xplor_map is None
            symmetry = readers.extract_from(str(mtz))
            raise RuntimeError("inside")
    assert symmetry.unit_cell().parameters()[:3] == (23.0, 23.0, 23.0)
    assert str(symmetry.space_group_info()) == "P 1"
    assert (readers.from_ccp4_map, readers.from_xplor_map) == saved

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

# --- 4. occupancies, alternative conformations, chain ids mmCIF only ----------

def altloc_peptide_text():
    """1us0 A26-35 (heavy atoms) in a P1 box with THR 28 OG1/CG2 in two
    conformers (A 0.6; B 0.4, turned 120 deg about CA-CB), the GLU 29 side
    chain at occupancy 0.5 and ALA 30 CB at 0."""
    import iotbx.pdb
    h = iotbx.pdb.input(str(TEST_DATA / "1us0_A26_35.pdb")).construct_hierarchy()
    for rg in h.residue_groups():
        ag = rg.atom_groups()[0]
        by_name = {a.name.strip(): a for a in ag.atoms()}
        if rg.resseq.strip() == "28":
            ca, cb = np.array(by_name["CA"].xyz), np.array(by_name["CB"].xyz)
            u = (cb - ca) / np.linalg.norm(cb - ca)
            c, s = np.cos(2 * np.pi / 3), np.sin(2 * np.pi / 3)
            k = np.array([[0, -u[2], u[1]], [u[2], 0, -u[0]], [-u[1], u[0], 0]])
            turn = np.eye(3) + s * k + (1 - c) * k @ k
            conf = {}
            for letter, occ in (("A", 0.6), ("B", 0.4)):
                conf[letter] = iotbx.pdb.hierarchy.atom_group(altloc=letter,
                                                              resname=ag.resname)
                for name in ("OG1", "CG2"):
                    a = by_name[name].detached_copy()
                    a.set_occ(occ)
                    if letter == "B":
                        a.set_xyz(tuple(cb + turn @ (np.array(a.xyz) - cb)))
                    conf[letter].append_atom(a)
            for name in ("OG1", "CG2"):
                ag.remove_atom(by_name[name])
            rg.append_atom_group(conf["A"])
            rg.append_atom_group(conf["B"])
        elif rg.resseq.strip() == "29":
            for name in ("CG", "CD", "OE1", "OE2"):
                by_name[name].set_occ(0.5)
        elif rg.resseq.strip() == "30":
            by_name["CB"].set_occ(0.0)
    h.atoms_reset_serial()
    from cctbx import crystal
    cs = crystal.symmetry(unit_cell=(50, 50, 50, 90, 90, 90), space_group_symbol="P1")
    return h.as_pdb_string(crystal_symmetry=cs)

def _prepare(args):
    from qr_phenix.command_line import run_checked
    from qr_phenix.programs.prepare import Program
    return run_checked(Program, [str(a) for a in args], logger=null_out())

def _by_id(h):
    return {(a.parent().altloc, a.parent().parent().resseq.strip(), a.name.strip()): a
            for a in h.atoms()}

def _rider(h, atom):
    """The heavy atom of the same conformer (or shared) nearest to an H."""
    rg = atom.parent().parent()
    alt = atom.parent().altloc
    heavy = [a for a in rg.atoms() if a.element.strip() != "H"
             and a.parent().altloc in ("", alt)]
    return min(heavy, key=atom.distance)

def test_prepare_keeps_occupancies_and_one_conformer(tmp_path):
    pytest.importorskip("pdbfixer", reason="requires pdbfixer (pip install pdbfixer openmm)")
    import iotbx.pdb
    pdb = tmp_path / "alt.pdb"
    pdb.write_text(altloc_peptide_text())
    out = tmp_path / "one.pdb"
    results = _prepare([pdb, "output.file_name=%s" % out])
    h = iotbx.pdb.input(str(out)).construct_hierarchy()
    assert not any(ag.altloc.strip() for ag in h.atom_groups())
    atoms = _by_id(h)
    # the kept conformer (A, the higher occupancy) is the whole model: occupancy 1
    assert atoms[("", "28", "OG1")].occ == 1.0
    # the others keep theirs (GLU 29 CB is 0.6 in the file, its side chain 0.5 here)
    assert atoms[("", "29", "OE1")].occ == 0.5 and atoms[("", "29", "CB")].occ == 0.6
    assert atoms[("", "29", "CA")].occ == 1.0 and atoms[("", "30", "CB")].occ == 0.0
    hydrogens = [a for a in h.atoms() if a.element.strip() == "H"]
    assert len(hydrogens) == results["report"].n_hydrogens > 50
    for a in hydrogens:
        assert a.occ == _rider(h, a).occ, a.id_str()
    assert atoms[("", "29", "HG2")].occ == 0.5 and atoms[("", "29", "HB2")].occ == 0.6
    assert atoms[("", "30", "HB1")].occ == 0.0

def test_prepare_keeps_conformers_for_library_refinement(library, tmp_path):
    pytest.importorskip("pdbfixer", reason="requires pdbfixer (pip install pdbfixer openmm)")
    import iotbx.pdb
    pdb = tmp_path / "alt.pdb"
    pdb.write_text(altloc_peptide_text())
    out = tmp_path / "keep.pdb"
    _prepare([pdb, "altlocs=keep", "output.file_name=%s" % out])
    h = iotbx.pdb.input(str(out)).construct_hierarchy()
    atoms = _by_id(h)
    thr = [rg for rg in h.residue_groups() if rg.resseq.strip() == "28"][0]
    assert [ag.altloc for ag in thr.atom_groups()] == ["", "A", "B"]
    for letter, occ in (("A", 0.6), ("B", 0.4)):
        # each conformer has its hydroxyl and methyl H, at its own occupancy
        names = {a.name.strip(): a.occ for a in thr.atom_groups()["AB".index(letter) + 1].atoms()}
        assert set(names) == {"OG1", "CG2", "HG1", "HG21", "HG22", "HG23"}, names
        assert set(names.values()) == {occ}
    assert atoms[("B", "28", "HG1")].distance(atoms[("A", "28", "HG1")]) > 1.0
    assert atoms[("", "28", "HB")].occ == 1.0 and atoms[("", "29", "HG2")].occ == 0.5
    # library refinement keeps the conformers
    geo = _run_refine([out, "qm_restraints.restraints=cctbx", "refinement.macro_cycles=1",
                       "refinement.validation=off", "output.prefix=%s" % (tmp_path / "geo")])
    h = iotbx.pdb.input(geo["outputs"]["pdb"]).construct_hierarchy()
    assert sorted({ag.altloc for ag in h.atom_groups()}) == ["", "A", "B"]
    # QM refuses them before any work, naming the way out
    with pytest.raises(Sorry, match="alternative conformations.*altlocs=one"):
        _run_refine([out, "output.prefix=%s" % (tmp_path / "qm")])

def long_chain_cif(path):
    """LEU-MSE-GLN as mmCIF with the chain id LONGA (PDB format holds 2 characters)."""
    import iotbx.pdb
    inp = iotbx.pdb.input(str(TEST_DATA / "mse_peptide.pdb"))
    h = inp.construct_hierarchy()
    for chain in h.chains():
        chain.id = "LONGA"
    path.write_text(h.as_mmcif_string(crystal_symmetry=inp.crystal_symmetry()))
    return path

def test_long_chain_ids_are_written_as_mmcif_only(library, tmp_path, monkeypatch):
    pytest.importorskip("pdbfixer", reason="requires pdbfixer (pip install pdbfixer openmm)")
    pytest.importorskip("hydride", reason="requires hydride (pip install hydride biotite)")
    import iotbx.pdb
    from qr_phenix.refinement.real_space import GeometryMinimisation
    cif = long_chain_cif(tmp_path / "long.cif")
    results = _prepare([cif, "output.file_name=%s" % (tmp_path / "p.pdb")])
    assert results["file_name"].endswith("p.cif") and not (tmp_path / "p.pdb").exists()
    h = iotbx.pdb.input(results["file_name"]).construct_hierarchy()
    assert {c.id for c in h.chains()} == {"LONGA"}
    # every residue got its hydrogens (PDBFixer saw the chain under a short id)
    assert results["report"].n_hydrogens == 30
    assert "LONGA GLN 56" in results["report"].added_terminals
    # refinement: interrupted after cycle 1, resumed, written as mmCIF only
    prefix = tmp_path / "r"
    args = [results["file_name"], "qm_restraints.restraints=cctbx", "refinement.macro_cycles=2",
            "refinement.r_tolerance=0", "refinement.shift_tolerance=0",
            "refinement.validation=off", "output.prefix=%s" % prefix]
    original = GeometryMinimisation.minimise
    calls = {"n": 0}

    def stop_in_cycle_2(self, scale):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Sorry("interrupted (simulated)")
        return original(self, scale)
    monkeypatch.setattr(GeometryMinimisation, "minimise", stop_in_cycle_2)
    with pytest.raises(Sorry, match="simulated"):
        _run_refine(args)
    monkeypatch.setattr(GeometryMinimisation, "minimise", original)
    r = _run_refine(args + ["output.resume=True"])
    assert [c["cycle"] for c in r["cycles"]] == [1, 2]
    assert r["outputs"]["pdb"] is None and not os.path.exists(str(prefix) + ".pdb")
    h = iotbx.pdb.input(r["outputs"]["cif"]).construct_hierarchy()
    assert {c.id for c in h.chains()} == {"LONGA"} and h.atoms_size() == 56
    assert "mmCIF only" in open(r["outputs"]["log"]).read()

# --- 5. found by benchmarks/bad_inputs.py: one line each, no traceback --------

def test_all_zero_occupancies_are_refused_for_data(qrx_files, tmp_path):
    pdb, cif = qrx_files
    zero = tmp_path / "zero.pdb"
    zero.write_text("".join((l[:54] + "  0.00" + l[60:] if l.startswith("HETATM") else l)
                            + "\n" for l in pdb.read_text().splitlines()))
    mtz = qrx_mtz(tmp_path / "data.mtz")
    with pytest.raises(Sorry, match="Every atom of .*zero.pdb has occupancy 0"):
        _run_refine([zero, mtz, cif, "qm_restraints.restraints=cctbx",
                     "output.prefix=%s" % (tmp_path / "out")])

def test_data_without_free_flags_and_residues_without_dictionary(library, qrx_files,
                                                                 tmp_path):
    import iotbx.mtz
    pdb, cif = qrx_files
    mtz = qrx_mtz(tmp_path / "data.mtz")
    arrays = iotbx.mtz.object(str(mtz)).as_miller_arrays()
    fobs = [a for a in arrays if a.info().labels[0] == "FOBS"][0]
    no_flags = tmp_path / "no_flags.mtz"
    fobs.as_mtz_dataset(column_root_label="FOBS").mtz_object().write(str(no_flags))
    with pytest.raises(Sorry) as e:
        _run_refine([pdb, no_flags, cif, "qm_restraints.restraints=cctbx",
                     "output.prefix=%s" % (tmp_path / "out")])
    assert "no usable free-R flags" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(Sorry) as e:
        _run_refine([pdb, mtz, "qm_restraints.restraints=cctbx",
                     "output.prefix=%s" % (tmp_path / "out")])
    assert "QRX" in str(e.value) and "CIF dictionary on the command line" in str(e.value)
    assert "\n" not in str(e.value)

def test_a_two_character_chain_id_gets_its_hydrogens(tmp_path):
    """PDB format holds 2 characters, OpenMM reads one: the chain is still
    protonated (it was silently left without H) and keeps its id."""
    pytest.importorskip("pdbfixer", reason="requires pdbfixer (pip install pdbfixer openmm)")
    import iotbx.pdb
    from qr_phenix.preparation import prepare_hierarchy
    h = iotbx.pdb.input(str(TEST_DATA / "1us0_A26_35.pdb")).construct_hierarchy()
    one, report_one = prepare_hierarchy(h, log=None)
    for chain in h.chains():
        chain.id = "AB"
    two, report_two = prepare_hierarchy(h, log=None)
    assert report_two.n_hydrogens == report_one.n_hydrogens > 50
    assert {c.id for c in two.chains()} == {"AB"}
    assert report_two.added_terminals == {"AB ILE 35": ["OXT"]}

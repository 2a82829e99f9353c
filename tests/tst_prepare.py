"""qr.prepare on 1us0: altlocs, missing atoms, hydrogens, ligand charges."""


import numpy as np
import pytest

from paths import ENTRY_1US0 as ENTRY

pytest.importorskip("iotbx.pdb", reason="requires cctbx (iotbx)")
pytest.importorskip("pdbfixer", reason="requires pdbfixer (pip install pdbfixer openmm)")
pytest.importorskip("hydride", reason="requires hydride (pip install hydride biotite)")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    if not ENTRY.exists():
        pytest.skip("missing %s" % ENTRY)
    from iotbx.cli_parser import run_program
    from libtbx.utils import null_out
    from qr_phenix.programs.prepare import Program
    out = tmp_path_factory.mktemp("prep") / "1us0_prepared.pdb"
    results = run_program(program_class=Program,
                          args=[str(ENTRY), "output.file_name=%s" % out],
                          logger=null_out())
    return results, out


def test_1us0_end_to_end(prepared):
    import iotbx.pdb
    results, out = prepared
    report = results["report"]
    h = iotbx.pdb.input(str(out)).construct_hierarchy()
    assert not any(ag.altloc.strip() for ag in h.atom_groups())
    els = [a.element.strip() for a in h.atoms()]
    assert els.count("H") == report.n_hydrogens > 3000
    # truncated HIS 312 / GLU 313 rebuilt, C-terminal OXT added
    assert "A GLU 313" in report.added_heavy_atoms
    names313 = {a.name.strip() for rg in h.residue_groups() if rg.resseq.strip() == "313"
                for a in rg.atoms()}
    assert {"CD", "OE1", "OXT"} <= names313
    # the added OXT is trigonal at C (PDBFixer's template fit alone left
    # CA-C-OXT at 75-92 deg on 4 of the 6 C-termini of 1va7 and 3kyi)
    glu313 = {a.name.strip(): np.array(a.xyz) for rg in h.residue_groups()
              if rg.resseq.strip() == "313" for a in rg.atoms()}

    def angle(a, b, c):
        u, v = glu313[a] - glu313[b], glu313[c] - glu313[b]
        return np.degrees(np.arccos(u @ v / np.linalg.norm(u) / np.linalg.norm(v)))
    assert 110 < angle("CA", "C", "OXT") < 130 and 110 < angle("O", "C", "OXT") < 130
    assert 1.2 < np.linalg.norm(glu313["OXT"] - glu313["C"]) < 1.3
    # Glu 313 had only N: every other atom is rebuilt, then minimised in
    # Amber14 (PDBFixer's placement alone: C-O 1.07 A, CA-CB 1.71 A).
    # Ideal lengths: Engh & Huber (2001)
    ideal = {("N", "CA"): 1.459, ("CA", "C"): 1.525, ("C", "O"): 1.229,
             ("CA", "CB"): 1.530, ("CB", "CG"): 1.520, ("CG", "CD"): 1.515,
             ("CD", "OE1"): 1.252, ("CD", "OE2"): 1.252}
    for (a, b), d0 in ideal.items():
        assert abs(np.linalg.norm(glu313[a] - glu313[b]) - d0) < 0.05, (a, b)
    assert 100 < angle("N", "CA", "C") < 120 and 100 < angle("CA", "CB", "CG") < 125
    assert report.relaxed_atoms >= 12        # 12 rebuilt heavy atoms, OXT and H
    # ligands: NADPH phosphates -4, inhibitor carboxylate -1, citrates -3
    charges = dict(c.split(": charge ")[0:2] for c in report.ligand_choices)
    assert charges["A NDP 318"].split()[0] == "-4"
    assert charges["A LDT 320"].split()[0] == "-1"
    assert report.total_charge == results["total_charge"]
    assert report.n_electrons % 2 == 0
    # every H is bonded (within 1.35 A of a heavy atom), nothing overlaps
    from scipy.spatial import cKDTree
    xyz = np.array(h.atoms().extract_xyz())
    is_h = np.array([e == "H" for e in els])
    d, _ = cKDTree(xyz[~is_h]).query(xyz[is_h])
    assert d.max() < 1.35
    assert len(cKDTree(xyz).query_pairs(0.9)) == 0


def test_anisotropic_b_of_existing_atoms_is_kept(prepared):
    """1us0 has ANISOU records; PDBFixer writes none, so prepare puts them back."""
    import iotbx.pdb
    _, out = prepared

    def uij_by_atom(path):
        h = iotbx.pdb.input(str(path)).construct_hierarchy()
        return {(rg.parent().id, rg.resseq.strip(), a.name.strip()): a.uij
                for rg in h.residue_groups() for a in rg.atoms()
                if a.uij_is_defined() and a.element.strip() != "H"
                and not a.parent().altloc.strip()}
    before, after = uij_by_atom(ENTRY), uij_by_atom(out)
    shared = set(before) & set(after)
    assert len(shared) > 0.9 * len(before) > 2000
    assert all(np.allclose(before[k], after[k], atol=1e-4) for k in shared)


def test_charge_column_read_back_as_ligand_charge(prepared):
    import iotbx.pdb
    from qr_phenix.chemical_groups import model_units
    _, out = prepared
    h = iotbx.pdb.input(str(out)).construct_hierarchy()
    units = {u.label: u.charge for u in model_units(h)}
    assert units["A NDP 318"] == -4 and units["A CIT 400"] == -3


def test_existing_output_is_refused(prepared):
    from iotbx.cli_parser import run_program
    from libtbx.utils import Sorry, null_out
    from qr_phenix.programs.prepare import Program
    _, out = prepared
    # relative name: an existing absolute .pdb path on the command line is read
    # as a second model by the cli parser
    import os
    cwd = os.getcwd()
    os.chdir(out.parent)
    try:
        with pytest.raises(Sorry, match="exists"):
            run_program(program_class=Program,
                        args=[str(ENTRY), "output.file_name=%s" % out.name],
                        logger=null_out())
    finally:
        os.chdir(cwd)


def test_prepare_gives_the_same_model_every_time(prepared):
    """OpenMM's multi-threaded CPU platform, unseeded Langevin steps for rebuilt
    side chains and random hydrogen starts made runs differ (and so, now and
    then, the total charge and the largest X-H distance).  Between machines
    the CPU platform's single-precision vector code did too; preparation runs
    on the Reference platform (same run here; other machines not checked)."""
    from libtbx.utils import null_out
    from qr_phenix.preparation import prepare_file
    _, out = prepared
    again, cs, _ = prepare_file(ENTRY, log=null_out())
    first = [l for l in open(out).read().splitlines() if l.startswith(("ATOM", "HETATM"))]
    second = [l for l in again.as_pdb_string(crystal_symmetry=cs).splitlines()
              if l.startswith(("ATOM", "HETATM"))]
    assert first == second

"""Non-standard residues: hydrogens of polymer-linked residues from prepare,
and library processing of what the library lacks."""

import numpy as np
import pytest

pytest.importorskip("iotbx.pdb", reason="requires cctbx (iotbx)")
pytest.importorskip("pdbfixer", reason="requires pdbfixer (pip install pdbfixer openmm)")
pytest.importorskip("hydride", reason="requires hydride (pip install hydride biotite)")

from paths import TEST_DATA as DATA

def _prepare(name, tmp_path):
    from qr_phenix.preparation import prepare_file
    h, cs, report = prepare_file(str(DATA / name))
    out = tmp_path / name
    out.write_text(h.as_pdb_string(crystal_symmetry=cs))
    return h, report, out

def _atoms(h, resseq):
    return {a.name.strip(): np.array(a.xyz) for rg in h.residue_groups()
            if rg.resseq.strip() == resseq for a in rg.atoms()}

def _angle(a, b, c):
    u, v = a - b, c - b
    return np.degrees(np.arccos(u @ v / np.linalg.norm(u) / np.linalg.norm(v)))

def test_mse_in_chain_prepared_and_processed(library, tmp_path):
    from qr_phenix.monomer_library import process_model
    h, report, out = _prepare("mse_peptide.pdb", tmp_path)
    mse = _atoms(h, "55")
    hydrogens = {n for n in mse if n.startswith("H")}
    # one H on the chain N, none on the linked C, no OXT
    assert hydrogens == {"H", "HA", "HB2", "HB3", "HG2", "HG3", "HE1", "HE2", "HE3"}
    assert "OXT" not in mse
    # the amide H lies in the C(i-1)-N-CA plane
    prev = _atoms(h, "54")
    total = (_angle(prev["C"], mse["N"], mse["CA"]) + _angle(mse["CA"], mse["N"], mse["H"])
             + _angle(prev["C"], mse["N"], mse["H"]))
    assert total == pytest.approx(360.0, abs=3.0)
    # the next residue's amide H points away from the MSE C
    gln = _atoms(h, "56")
    assert sum(1 for n in gln if n in ("H", "H2", "H3")) == 1
    assert _angle(mse["C"], gln["N"], gln["H"]) > 110
    assert any("MSE 55: charge +0" in c for c in report.ligand_choices)
    model = process_model(str(out))
    assert model.get_number_of_atoms() == h.atoms_size()

def _bond_proxies(model):
    geometry = model.get_restraints_manager().geometry
    return geometry.get_all_bond_proxies(sites_cart=model.get_sites_cart())[0]

def test_nep_gets_a_ccd_dictionary(library, tmp_path):
    import scitbx.lbfgs
    import biotite.structure.info as info
    from cctbx.geometry_restraints import lbfgs as geometry_lbfgs
    from qr_phenix.monomer_library import process_model
    h, report, out = _prepare("nep_peptide.pdb", tmp_path)
    nep = _atoms(h, "51")
    assert {"H", "HA", "HD2", "HE1"} <= set(nep) and not {"H2", "OXT", "HXT"} & set(nep)
    model = process_model(str(out))
    text = model.qr_phenix_generated_dictionaries["NEP"]
    assert "data_comp_NEP" in text and " peptide " in text
    atoms = model.get_hierarchy().atoms()
    nep_ids = {a.i_seq for a in atoms if a.parent().resname == "NEP"}
    bonds = {tuple(sorted((atoms[i].name.strip(), atoms[j].name.strip())))
             for p in _bond_proxies(model) for i, j in [p.i_seqs]
             if i in nep_ids and j in nep_ids}
    assert ("NE2", "P") in bonds and ("CD2", "HD2") in bonds and len(bonds) == 20
    angles = model.get_restraints_manager().geometry.angle_proxies
    assert sum(1 for p in angles if set(p.i_seqs) <= nep_ids) == 33
    # peptide links to both neighbours
    names = {a.i_seq: (a.parent().resname, a.name.strip()) for a in atoms}
    links = {(names[i], names[j]) for p in _bond_proxies(model) for i, j in [p.i_seqs]
             if (i in nep_ids) != (j in nep_ids)}
    assert {tuple(sorted(x)) for x in links} == {
        (("NEP", "N"), ("VAL", "C")), (("NEP", "C"), ("THR", "N"))}
    # minimise with nuclear X-H targets: bonds end near the CCD ideal lengths
    model = process_model(str(out), nuclear=True)
    sites = model.get_sites_cart().deep_copy()
    geometry_lbfgs.lbfgs(
        sites_cart=sites,
        geometry_restraints_manager=model.get_restraints_manager().geometry,
        lbfgs_termination_params=scitbx.lbfgs.termination_parameters(max_iterations=500))
    ref = info.residue("NEP")
    ideal = {}
    for i, j, _ in ref.bonds.as_array():
        ideal[tuple(sorted((str(ref.atom_name[i]), str(ref.atom_name[j]))))] = float(
            np.linalg.norm(ref.coord[i] - ref.coord[j]))
    xyz = {atoms[i].name.strip(): np.array(sites[i]) for i in nep_ids}
    deviations = [abs(np.linalg.norm(xyz[a] - xyz[b]) - ideal[(a, b)]) for a, b in bonds]
    print("max bond deviation from CCD ideal: %.3f A" % max(deviations))
    assert max(deviations) < 0.05

def test_acetate_dictionary_types():
    pytest.importorskip("biotite")
    from qr_phenix.ccd_dictionary import Component, dictionary_text, energy_type
    comp = Component("ACT", ["C", "O", "OXT", "CH3", "H1", "H2", "H3"], {"OXT": -1})
    types = {n: energy_type(comp, i) for i, n in enumerate(comp.names)}
    assert types == {"C": "C", "O": "O", "OXT": "OC", "CH3": "CH3", "H1": "HCH3",
                     "H2": "HCH3", "H3": "HCH3"}
    text = dictionary_text(comp)
    assert "_chem_comp_plane_atom" in text and "non-polymer" in text

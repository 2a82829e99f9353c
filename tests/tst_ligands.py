"""Non-standard residues: hydrogens of polymer-linked residues from prepare,
and library processing of what the library lacks."""

from pathlib import Path

import numpy as np
import pytest

from libtbx.utils import Sorry

pytest.importorskip("iotbx.pdb", reason="requires cctbx (iotbx)")
pytest.importorskip("pdbfixer", reason="requires pdbfixer (pip install pdbfixer openmm)")
pytest.importorskip("hydride", reason="requires hydride (pip install hydride biotite)")

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="module")
def library():
    from qr_phenix import monomer_library as ml
    try:
        return ml.find_or_install_library()
    except Sorry as e:
        pytest.skip("no monomer library (%s)" % str(e).splitlines()[0])


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

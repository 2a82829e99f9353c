"""Validation (probe2 clashscore, H-bond geometry) on the 1us0 helix with
real cctbx and the monomer library."""

import json
import math

import numpy as np
import pytest

from libtbx.utils import Sorry

from qr_phenix import validation
from qr_phenix import monomer_library as ml


@pytest.fixture(scope="module")
def helix_model(helix_pdb):
    try:
        ml.activate_library()
    except Sorry as e:
        pytest.skip("no monomer library (%s)" % str(e).splitlines()[0])
    return ml.process_model(helix_pdb)


@pytest.fixture(scope="module")
def reference(helix_model):
    return (validation.clashscore(helix_model),
            validation.hbond_geometry(helix_model))


def _index(model, resseq, name):
    for a in model.get_hierarchy().atoms():
        if (a.parent().parent().resseq.strip() == str(resseq)
                and a.name.strip() == name):
            return a.i_seq
    raise KeyError((resseq, name))


def _with_sites(model, sites):
    from scitbx.array_family import flex
    copy = model.deep_copy()
    copy.set_sites_cart(flex.vec3_double([tuple(x) for x in sites]))
    return copy


def _sites(model):
    return np.array(model.get_sites_cart())


def _pdb_atom(serial, name, resname, chain, resseq, xyz, element):
    record = "ATOM  " if resname == "GLY" else "HETATM"
    return "%s%5d %-4s %3s %1s%4d    %8.3f%8.3f%8.3f  1.00 20.00          %2s" % (
        record, serial, name if len(name) == 4 else " " + name, resname,
        chain, resseq, xyz[0], xyz[1], xyz[2], element)


def test_reference_helix(reference):
    clash, hb = reference
    assert clash.error is None, clash.error
    assert clash.clashscore == 0.0 and clash.n_clashes == 0
    assert clash.n_atoms == 94 and clash.excluded == []
    # 9 N-H...O=C (i, i+4) plus the C-terminal O-H...O
    assert hb.error is None, hb.error
    assert hb.n_backbone == 9 and hb.n == 10
    assert hb.n_symmetry == 0 and hb.n_poor == 0
    assert 1.8 < hb.d_ha_mean < 2.1 and 0.05 < hb.d_ha_sd < 0.3
    assert 150 < hb.a_dha_mean < 170 and hb.a_dha_sd < 10


def test_results_are_json_and_one_line(reference):
    for result in reference:
        text = json.dumps(result.as_dict())
        assert json.loads(text) == result.as_dict()
        assert "\n" not in result.summary()
    assert reference[0].summary().startswith("clashscore 0.00")
    assert reference[1].summary().startswith("H-bonds 10 (9 backbone)")


def test_moved_atom_clashes(helix_model, reference):
    # O of residue 97 (no H-bond partner) put 1.5 A from CA of residue 93
    sites = _sites(helix_model)
    o, ca = _index(helix_model, 97, "O"), _index(helix_model, 93, "CA")
    direction = sites[o] - sites[ca]
    sites[o] = sites[ca] + 1.5 * direction / np.linalg.norm(direction)
    result = validation.clashscore(_with_sites(helix_model, sites))
    assert result.error is None, result.error
    assert result.n_clashes >= 1
    assert result.clashscore > reference[0].clashscore
    assert result.clashscore == pytest.approx(
        1000.0 * result.n_clashes / 94)
    worst = result.worst[0]
    assert "GLY 97 O" in worst and "GLY 93" in worst, result.worst
    assert float(worst.split()[-1]) > 1.0


def _stretched(model, factor):
    # scaled along the helix axis about the centre
    sites = _sites(model)
    centre = sites.mean(axis=0)
    axis = np.linalg.svd(sites - centre)[2][0]
    along = (sites - centre) @ axis
    return _with_sites(model, sites + (factor - 1) * np.outer(along, axis))


def test_stretched_helix_loses_hbonds(helix_model, reference):
    ref = reference[1]
    # x1.3: the same H-bonds, longer and some poor
    mild = validation.hbond_geometry(_stretched(helix_model, 1.3))
    assert mild.error is None
    assert mild.n_backbone == ref.n_backbone
    assert mild.d_ha_mean > ref.d_ha_mean + 0.3
    assert mild.n_long > ref.n_long and mild.n_poor > ref.n_poor
    # x1.5: the helix is broken
    broken = validation.hbond_geometry(_stretched(helix_model, 1.5))
    assert broken.error is None
    assert broken.n_backbone <= 2 and broken.n < ref.n


def test_waters_and_unknown_ligand(helix_model, helix_pdb, tmp_path):
    # The ligand without a dictionary comes first: mmtbx then gives every
    # later atom the wrong radius unless the ligand is left out.
    sites = _sites(helix_model)
    low = sites.min(axis=0) - 4.0
    ligand = [("C1", low, "C"), ("O1", low + (1.4, 0, 0), "O"),
              ("H1", low + (1.7, 0.9, 0), "H"), ("H2", low + (-0.4, 1.0, 0), "H")]
    lines = [_pdb_atom(i + 1, n, "ZZQ", "B", 1, x, e)
             for i, (n, x, e) in enumerate(ligand)]
    with open(helix_pdb) as f:
        lines += [l.rstrip("\n") for l in f
                  if l.startswith(("CRYST1", "ATOM", "HETATM"))]
    # water 1 accepts nothing and donates to O of residue 97; water 2 has no H
    o, c = _index(helix_model, 97, "O"), _index(helix_model, 97, "C")
    u = (sites[o] - sites[c]) / np.linalg.norm(sites[o] - sites[c])
    p = np.cross(u, (0, 0, 1.0))
    p /= np.linalg.norm(p)
    ow = sites[o] + 2.9 * u
    angle = math.radians(104.5)
    water = [("O", ow, "O"), ("H1", ow - 0.96 * u, "H"),
             ("H2", ow + 0.96 * (-math.cos(angle) * u + math.sin(angle) * p),
              "H")]
    lines += [_pdb_atom(200 + i, n, "HOH", "W", 1, x, e)
              for i, (n, x, e) in enumerate(water)]
    lines += [_pdb_atom(210, "O", "HOH", "W", 2, ow + 6.0 * p, "O"), "END"]
    path = tmp_path / "helix_water_ligand.pdb"
    path.write_text("\n".join(lines) + "\n")
    model = ml.process_model(str(path), stop_for_unknowns=False)
    assert model.size() == 94 + 4 + 4

    clash = validation.clashscore(model)
    assert clash.error is None, clash.error
    assert clash.excluded == ["B ZZQ 1"] and clash.n_excluded_atoms == 4
    # waters are targets only and not counted in the atoms
    assert clash.n_atoms == 94 and clash.clashscore == 0.0
    hb = validation.hbond_geometry(model)
    assert hb.error is None and hb.n == 11 and hb.n_backbone == 9


def test_water_on_helix_atom_clashes(helix_model, helix_pdb, tmp_path):
    sites = _sites(helix_model)
    ca = _index(helix_model, 92, "CA")
    centre = sites.mean(axis=0)
    out = (sites[ca] - centre) / np.linalg.norm(sites[ca] - centre)
    with open(helix_pdb) as f:
        lines = [l.rstrip("\n") for l in f
                 if l.startswith(("CRYST1", "ATOM", "HETATM"))]
    lines += [_pdb_atom(300, "O", "HOH", "W", 1, sites[ca] + 1.5 * out, "O"),
              "END"]
    path = tmp_path / "helix_water_clash.pdb"
    path.write_text("\n".join(lines) + "\n")
    result = validation.clashscore(ml.process_model(str(path)))
    assert result.error is None, result.error
    assert result.n_clashes >= 1 and result.n_atoms == 94
    assert "HOH" in result.worst[0] and "GLY 92" in result.worst[0]


def test_small_p1_cell(helix_model):
    # cell 0.5 A wider than the helix: images almost touch
    from cctbx import crystal
    import iotbx.pdb
    hierarchy = helix_model.get_hierarchy()
    sites = _sites(helix_model)
    extent = sites.max(axis=0) - sites.min(axis=0)
    symmetry = crystal.symmetry(
        (extent[0] + 0.5, extent[1] + 0.5, extent[2] + 5.0, 90, 90, 90), "P 1")
    pdb_inp = iotbx.pdb.input(source_info=None, lines=hierarchy.as_pdb_string(
        crystal_symmetry=symmetry))
    model = ml.process_model(pdb_inp)
    clash = validation.clashscore(model)
    assert clash.error is None and clash.clashscore == 0.0
    # mmtbx lists some pairs twice in such cells; each is counted once
    hb = validation.hbond_geometry(model)
    assert hb.error is None and (hb.n, hb.n_backbone) == (10, 9)


def test_probe_failure_is_reported(helix_model, monkeypatch):
    def fail(*args, **kwargs):
        raise Sorry("probe2 could not run\nsecond line")
    monkeypatch.setattr(validation, "_run_probe2", fail)
    result = validation.clashscore(helix_model)
    assert result.clashscore is None
    assert result.error == "Sorry: probe2 could not run"
    assert "not available" in result.summary()
    json.dumps(result.as_dict())


def test_unprocessed_model_is_processed(helix_pdb):
    import iotbx.pdb
    import mmtbx.model
    ml.activate_library()
    model = mmtbx.model.manager(model_input=iotbx.pdb.input(helix_pdb))
    hb = validation.hbond_geometry(model)
    assert (hb.n, hb.n_backbone) == (10, 9)
    assert model.get_restraints_manager() is None


def test_pair_listed_twice_is_counted_once():
    from cctbx import sgtbx
    from libtbx import group_args

    def record(i, j, h, a, symop):
        return group_args(i=i, j=j, atom_H=group_args(index=h),
                          atom_A=group_args(index=a),
                          symop=sgtbx.rt_mx(symop))
    found = [record(5, 9, 5, 9, "x,y,z+1"),
             record(9, 5, 5, 9, "x,y,z-1"),   # the same, seen from A
             record(5, 9, 5, 9, "x,y,z-1"),   # another image of A
             record(1, 2, 1, 2, "x,y,z"),
             record(2, 1, 1, 2, "x,y,z")]
    unique = validation._unique(found)
    assert [(r.i, r.j, str(r.symop)) for r in unique] == [
        (5, 9, "x,y,z+1"), (5, 9, "x,y,z-1"), (1, 2, "x,y,z")]

"""Monomer library: install, overlay, and processing of hydrogenated proteins
with real cctbx and real files."""

import ast
import io
import math
import re
import zipfile
from pathlib import Path

import pytest

from libtbx.utils import Sorry

from qr_phenix import monomer_library as ml

from paths import HELIX_PDB as A87_99_H




def _mods_used(log_text):
    used = {}
    for match in re.finditer(r"Modifications used: (\{[^}]*\})", log_text):
        for mod, n in ast.literal_eval(match.group(1)).items():
            used[mod] = used.get(mod, 0) + n
    return used


def _h_bond_counts(model):
    """{i_seq: number of bond restraints} for every H/D atom."""
    geometry = model.get_restraints_manager().geometry
    proxies = geometry.get_all_bond_proxies(
        sites_cart=model.get_sites_cart())[0]
    hd = set(model.get_hd_selection().iselection())
    counts = {i: 0 for i in hd}
    for proxy in proxies:
        for i in proxy.i_seqs:
            if i in counts:
                counts[i] += 1
    return counts


def _assert_one_bond_per_h(model):
    atoms = model.get_hierarchy().atoms()
    counts = _h_bond_counts(model)
    assert counts, "model has no H"
    bad = [atoms[i].id_str() for i, n in counts.items() if n != 1]
    assert not bad, "H without exactly one bond restraint: %s" % bad


# --- a peptide generator: idealized_aa residues on an extended backbone -------

def _v(a, b):
    return [a[k] - b[k] for k in range(3)]


def _unit(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _add(a, v, s=1.0):
    return tuple(a[k] + s * v[k] for k in range(3))


def _cross(a, b):
    return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2],
            a[0] * b[1] - a[1] * b[0]]


def _h_on(atom, parent, ref, length=0.97, angle=109.5):
    """H on `atom` at `angle` from `parent`, syn to `ref` (bonded to parent)."""
    a = _unit(_v(atom, parent))
    r = _v(ref, parent)
    dot = sum(r[k] * a[k] for k in range(3))
    perp = _unit([r[k] - dot * a[k] for k in range(3)])
    t = math.radians(180.0 - angle)
    return _add(atom, [math.cos(t) * a[k] + math.sin(t) * perp[k]
                       for k in range(3)], length)


def _amine_hs(n, ca, avoid=None, count=3):
    """Tetrahedral N-H positions; with `avoid` (PRO CD) the free ones."""
    u = _unit(_v(n, ca))
    seed = [1.0, 0.0, 0.0] if abs(u[0]) < 0.9 else [0.0, 1.0, 0.0]
    v = _unit(_cross(u, seed))
    w = _cross(u, v)
    phase = 0.0
    if avoid is not None:
        d = _v(avoid, n)
        phase = math.atan2(sum(d[k] * w[k] for k in range(3)),
                           sum(d[k] * v[k] for k in range(3)))
        phase += math.radians(120.0)
    t = math.radians(180.0 - 109.5)
    result = []
    for i in range(count):
        p = phase + math.radians(120.0) * i
        result.append(_add(n, [math.cos(t) * u[k] + math.sin(t) * (
            math.cos(p) * v[k] + math.sin(p) * w[k]) for k in range(3)], 1.0))
    return result


def _ideal_residues():
    from mmtbx.monomer_library import idealized_aa
    return idealized_aa.residue_dict()


# N, CA, C, O of two residues of an ideal beta strand
# (mmtbx.secondary_structure.build.ss_idealization.beta_pdb_str).
BETA = [[(27.961, 0.504, 1.988), (29.153, 0.205, 2.773),
         (30.420, 0.562, 2.003), (30.753, -0.077, 1.005)],
        [(31.123, 1.587, 2.474), (32.355, 2.031, 1.832),
         (33.552, 1.851, 2.758), (33.675, 2.539, 3.772)]]


def _backbone_step():
    """Rotation, translation taking residue i of the strand to i+1."""
    from scitbx.math import superpose
    from scitbx.array_family import flex
    fit = superpose.least_squares_fit(reference_sites=flex.vec3_double(BETA[1]),
                                      other_sites=flex.vec3_double(BETA[0]))
    return fit.r, fit.t


def build_chain(chain_id, residues, n_term, c_term, shift=(0, 0, 0)):
    """A hydrogenated chain as {(resseq, resname): [(name, element, xyz)]}.

    residues: list of (resname, variant); variant "" or one of HID, HIE
    (HIS), ACID (ASP/GLU protonated). n_term: names of the N-terminal H
    ("H1 H2 H3", "HT1 HT2", "H H2", "H2 H3" for PRO). c_term: "OXT" or
    "OXT HXT".
    """
    from scitbx.math import superpose
    from scitbx.array_family import flex
    ideal = _ideal_residues()
    r, t = _backbone_step()
    frame = flex.vec3_double(BETA[0][:3])
    o_template = flex.vec3_double(BETA[0][3:])
    chain = []
    previous_c = None
    for i, (resname, variant) in enumerate(residues):
        h = ideal[resname.lower() + "_h"]
        atoms = {a.name.strip(): a.xyz for a in h.atoms()}
        fit = superpose.least_squares_fit(
            reference_sites=frame,
            other_sites=flex.vec3_double([atoms[n] for n in ("N", "CA", "C")]))
        moved = fit.r.elems * flex.vec3_double(list(atoms.values())) + \
            fit.t.elems
        xyz = dict(zip(atoms.keys(), moved))
        xyz["O"] = o_template[0]
        xyz.pop("H", None)
        if resname == "HIS" and variant == "HID":
            xyz.pop("HE2")
        if resname == "HIS" and variant == "HIE":
            xyz.pop("HD1")
        if resname == "ASP" and variant != "ACID":
            xyz.pop("HD2", None)
        if resname == "GLU" and variant != "ACID":
            xyz.pop("HE2", None)
        n, ca, c = xyz["N"], xyz["CA"], xyz["C"]
        if i == 0:
            names = n_term.split()
            hs = _amine_hs(n, ca, avoid=xyz.get("CD") if resname == "PRO"
                           else None, count=3)
            for name, pos in zip(names, hs):
                xyz[name] = pos
        elif resname != "PRO":
            bisector = _unit([a + b for a, b in zip(
                _unit(_v(n, previous_c)), _unit(_v(n, ca)))])
            xyz["H"] = _add(n, bisector, 1.0)
        if i == len(residues) - 1:
            o = xyz["O"]
            oxt = _add(c, _unit([-(a + b) for a, b in zip(
                _unit(_v(o, c)), _unit(_v(ca, c)))]), 1.25)
            xyz["OXT"] = oxt
            if "HXT" in c_term.split():
                xyz["HXT"] = _h_on(oxt, c, o)
        chain.append((resname, {name: _add(p, shift) for name, p in
                                xyz.items()}))
        previous_c = c
        frame = r.elems * frame + t.elems
        o_template = r.elems * o_template + t.elems
    return chain_id, chain


def chains_as_pdb(chains):
    lines = []
    serial = 0
    for chain_id, chain in chains:
        for resseq, (resname, xyz) in enumerate(chain, start=1):
            for name, pos in xyz.items():
                serial += 1
                element = "S" if name.startswith("S") else name[0]
                padded = name if len(name) == 4 else " " + name.ljust(3)
                lines.append(
                    "ATOM  %5d %4s %3s %1s%4d    %8.3f%8.3f%8.3f  1.00 20.00"
                    "          %2s" % (serial, padded, resname, chain_id,
                                       resseq, pos[0], pos[1], pos[2],
                                       element))
        lines.append("TER")
    return "\n".join(lines + ["END"]) + "\n"


ALL_20 = "ALA CYS ASP GLU PHE GLY HIS ILE LYS LEU MET ASN PRO GLN ARG SER " \
         "THR VAL TRP TYR".split()


def all_amino_acid_chains():
    return [
        # every residue type once; charged termini H1/H2/H3 + OXT; HIS as HIP
        build_chain("A", [(r, "") for r in ALL_20], "H1 H2 H3", "OXT"),
        # PRO N-terminus (H2/H3), protonated ASP and GLU, HIS HD1 only,
        # neutral C-terminus OXT/HXT
        build_chain("B", [("PRO", ""), ("ASP", "ACID"), ("GLU", "ACID"),
                          ("HIS", "HID"), ("LYS", "")],
                    "H2 H3", "OXT HXT", shift=(0, 20, 0)),
        # neutral N-terminus HT1/HT2, HIS HE2 only, CYS, neutral C-terminus
        build_chain("C", [("GLY", ""), ("HIS", "HIE"), ("CYS", ""),
                          ("ARG", "")],
                    "HT1 HT2", "OXT HXT", shift=(0, 40, 0)),
        # neutral N-terminus H/H2, charged C-terminus
        build_chain("D", [("VAL", ""), ("SER", ""), ("ARG", "")],
                    "H H2", "OXT", shift=(0, 60, 0)),
        # PRO N-terminus named H1/H2
        build_chain("E", [("PRO", ""), ("ALA", "")], "H1 H2", "OXT",
                    shift=(0, 80, 0)),
    ]


# --- tests -------------------------------------------------------------------

def test_library_found_and_overlay(library):
    """The active library has the mods mmtbx needs and mmtbx finds it."""
    from mmtbx.monomer_library import server
    path = Path(library)
    assert ml.is_library(path)
    assert not ml.needs_patch(path)
    found = server.find_mon_lib_file(
        relative_path_components=["list", "mon_lib_list.cif"])
    assert found is not None and Path(found).parent.parent == path
    text = (path / "list" / "mon_lib_list.cif").read_text()
    for mod_id in ("NH1NOTPRO", "NH2NOTPRO", "COOH", "ACID-ASP", "ACID-GLU"):
        assert "data_mod_%s\n" % mod_id in text
    # a second call is cached and cheap
    assert ml.activate_library() == ml.find_library() == library
    gly = ml.monomer_server().get_comp_comp_id_direct("GLY")
    assert {"HA1", "HA2"} <= {atom.atom_id for atom in gly.atom_list}
    assert ml.monomer_server() is ml.monomer_server()


def test_extract_and_overlay_from_a_small_wheel(library, tmp_path):
    """extract_from_wheel takes only the monomer folder; build_overlay
    renames CH2 hydrogens and adds the mods and neutron distances."""
    source = Path(library)
    wheel = tmp_path / "coot_headless_api-0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("coot_headless_api/__init__.py", "raise ImportError\n")
        z.writestr("coot_headless_api/share/coot/lib/data/other.txt", "x")
        for relative in ("list/mon_lib_list.cif", "ener_lib.cif",
                         "g/GLY.cif"):
            original = source / relative
            # the overlay's GLY is already patched: use the raw one if any
            raw = ml.cache_dir() / "ccp4" / relative
            z.write(raw if raw.is_file() else original,
                    ml.WHEEL_MONOMER_DIR + relative)
    raw = ml.extract_from_wheel(wheel, tmp_path / "ccp4")
    files = sorted(str(p.relative_to(raw)) for p in raw.rglob("*")
                   if p.is_file())
    assert files == [ml.EXTRACT_STAMP, "ener_lib.cif", "g/GLY.cif",
                     "list/mon_lib_list.cif"]
    overlay = ml.build_overlay(raw, tmp_path / "overlay")
    assert ml.overlay_is_current(raw, overlay)
    assert (overlay / "ener_lib.cif").is_symlink()
    import iotbx.cif
    gly = iotbx.cif.reader(file_path=str(overlay / "g" / "GLY.cif")).model()
    block = gly["comp_GLY"]
    names = list(block.get_loop("_chem_comp_atom")["_chem_comp_atom.atom_id"])
    if "HA3" in (raw / "g" / "GLY.cif").read_text():
        assert "HA1" in names and "HA3" not in names
    bonds = block.get_loop("_chem_comp_bond")
    assert "_chem_comp_bond.value_dist_neutron" in bonds.keys() or \
        "_chem_comp_bond.value_dist_nucleus" not in bonds.keys()
    text = (overlay / "list" / "mon_lib_list.cif").read_text()
    assert "data_mod_NH1NOTPRO" in text and "data_mod_COOH" in text
    iotbx.cif.reader(input_string=text)      # parses back


def test_no_library_gives_sorry_naming_the_fix(library, tmp_path,
                                               monkeypatch):
    from mmtbx.monomer_library import server
    monkeypatch.delenv(ml.ENV_LIB, raising=False)
    monkeypatch.delenv(ml.ENV_CLIBD, raising=False)
    if server.find_mon_lib_file(
            relative_path_components=["list", "mon_lib_list.cif"]):
        pytest.skip("mmtbx finds a library by itself (PHENIX chem_data)")
    monkeypatch.setenv(ml.ENV_DATA, str(tmp_path))
    with pytest.raises(Sorry) as e:
        ml.find_library()
    assert ml.INSTALL_COMMAND in str(e.value)


def test_a87_99_h(library):
    if not A87_99_H.is_file():
        pytest.skip("missing input %s" % A87_99_H)
    log = io.StringIO()
    model = ml.process_model(str(A87_99_H), log=log)
    assert _mods_used(log.getvalue()) == {
        "COOH": 1, "DEL-HN1": 12, "NH1NOTPRO": 1}
    _assert_one_bond_per_h(model)
    assert model.get_hd_selection().count(True) == 41
    assert not model.get_current_pdb_interpretation_params() \
        .pdb_interpretation.use_neutron_distances
    x_ray = model.get_restraints_manager().geometry.energies_sites(
        sites_cart=model.get_sites_cart()).bond_deviations()[2]
    nuclear = ml.process_model(str(A87_99_H), nuclear=True)
    assert nuclear.get_current_pdb_interpretation_params() \
        .pdb_interpretation.use_neutron_distances
    rmsd = nuclear.get_restraints_manager().geometry.energies_sites(
        sites_cart=nuclear.get_sites_cart()).bond_deviations()[2]
    # the model has nuclear X-H lengths (bond rmsd 0.070 with X-ray, 0.014 with nuclear)
    assert x_ray > 0.05 and rmsd < 0.02


def test_restraint_objects_with_plain_ccp4_library(library, monkeypatch):
    """The non-global variant: plain CCP4 library + restraint objects."""
    if not A87_99_H.is_file():
        pytest.skip("missing input %s" % A87_99_H)
    raw = ml.cache_dir() / "ccp4"
    if not (ml.is_library(raw) and ml.needs_patch(raw)):
        pytest.skip("no plain CCP4 library in %s" % raw)
    import iotbx.pdb
    import mmtbx.model
    from libtbx.utils import null_out
    monkeypatch.setenv(ml.ENV_LIB, str(raw))
    pdb_inp = iotbx.pdb.input(file_name=str(A87_99_H))
    hierarchy = pdb_inp.construct_hierarchy()
    objects = ml.restraint_objects_for(hierarchy, nuclear=True, library=raw)
    names = [name for name, _ in objects]
    assert "qr_phenix_mods.cif" in names and "qr_phenix_GLY.cif" in names
    assert ml.restraint_objects_for(hierarchy, nuclear=True, library=raw) \
        == objects                                   # cached
    model = mmtbx.model.manager(model_input=pdb_inp, restraint_objects=objects,
                                log=null_out())
    params = model.get_default_pdb_interpretation_params()
    params.pdb_interpretation.use_neutron_distances = True
    model.process(make_restraints=True, pdb_interpretation_params=params)
    _assert_one_bond_per_h(model)
    # with the overlay active nothing is needed
    assert ml.restraint_objects_for(hierarchy, library=library) == [] or \
        not ml.needs_patch(library)


def test_all_amino_acids_and_termini(library, tmp_path):
    chains = all_amino_acid_chains()
    n_h = sum(name.startswith("H") for _, chain in chains
              for _, xyz in chain for name in xyz)
    path = tmp_path / "all20.pdb"
    path.write_text(chains_as_pdb(chains))
    log = io.StringIO()
    model = ml.process_model(str(path), log=log)
    used = _mods_used(log.getvalue())
    for mod_id in ("NH1NOTPRO", "COOH", "ACID-ASP", "ACID-GLU", "NH2"):
        assert used.get(mod_id), (mod_id, used)
    _assert_one_bond_per_h(model)
    resnames = {ag.resname for ag in model.get_hierarchy().atom_groups()}
    assert resnames == set(ALL_20)
    assert model.get_hd_selection().count(True) == n_h > 250


def test_unknown_residue(library, tmp_path):
    peptide = chains_as_pdb([build_chain("A", [("GLY", ""), ("GLY", "")],
                                         "H1 H2 H3", "OXT")])
    zzq = "\n".join([
        "HETATM  901  C1  ZZQ B   1      10.000  10.000  10.000  1.00 20.00"
        "           C",
        "HETATM  902  O1  ZZQ B   1      11.400  10.000  10.000  1.00 20.00"
        "           O",
        "HETATM  903  H1  ZZQ B   1      11.700  10.900  10.000  1.00 20.00"
        "           H",
        "HETATM  904  H2  ZZQ B   1       9.600  11.000  10.000  1.00 20.00"
        "           H"])
    path = tmp_path / "zzq.pdb"
    path.write_text(peptide.replace("END\n", zzq + "\nEND\n"))
    with pytest.raises(Sorry) as e:
        ml.process_model(str(path))
    message = str(e.value)
    assert "ZZQ" in message and "stop_for_unknowns=False" in message
    assert "GLY" not in message
    model = ml.process_model(str(path), stop_for_unknowns=False)
    n_records = sum(line.startswith(("ATOM", "HETATM"))
                    for line in path.read_text().splitlines())
    assert model.get_number_of_atoms() == n_records


def test_unreadable_model_file(library, tmp_path):
    missing = tmp_path / "missing.pdb"
    with pytest.raises(Sorry) as e:
        ml.process_model(str(missing))
    assert "missing.pdb" in str(e.value)
    # (not an unterminated CIF quote: iotbx segfaults on that)
    garbage = tmp_path / "garbage.pdb"
    garbage.write_text("hello world\nthis is not a model\n")
    with pytest.raises(Sorry) as e:
        ml.process_model(garbage)
    assert "garbage.pdb" in str(e.value)
    empty = tmp_path / "empty.cif"
    empty.write_text("data_x\n_cell.length_a 10\n")
    with pytest.raises(Sorry) as e:
        ml.process_model(empty)
    assert "empty.cif" in str(e.value)


def test_inputs_and_overrides(library, tmp_path):
    import iotbx.pdb
    text = chains_as_pdb([build_chain("A", [("SER", ""), ("LYS", "")],
                                      "H1 H2 H3", "OXT")])
    pdb_inp = iotbx.pdb.input(source_info=None, lines=text)
    model = ml.process_model(pdb_inp, grm_normalization=False)
    again = ml.process_model(model, nuclear=True, pdb_interpretation_overrides={
        "flip_symmetric_amino_acids": False})
    assert again is not model
    assert again.get_current_pdb_interpretation_params() \
        .pdb_interpretation.flip_symmetric_amino_acids is False
    _assert_one_bond_per_h(again)
    with pytest.raises(Sorry):
        ml.process_model(model, pdb_interpretation_overrides={"no_such": 1})

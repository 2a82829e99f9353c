"""Restraint dictionaries for residues the monomer library lacks, built from
the PDB Chemical Component Dictionary (CCD) copy that biotite ships.

For each such residue a CCP4-style monomer CIF is written from the CCD
entry (ideal coordinates, bond orders, atom names incl. hydrogens), keeping
only the atoms present in the model:

* _chem_comp_atom: type_symbol, a simple CCP4 energy type (from element,
  hydrogen count in the model, aromaticity, bond orders), formal charge from
  the model's charge column, ideal coordinates;
* _chem_comp_bond: ideal distance, esd 0.02; X-H bonds get the ideal
  (nuclear) distance as value_dist_neutron and a shortened X-ray value
  (as in the CCP4 library);
* _chem_comp_angle: from the ideal coordinates, esd 3.0;
* _chem_comp_chir: CCD stereo centres, sign from the ideal coordinates;
* _chem_comp_plane_atom: aromatic systems and sp2 centres with their
  neighbours, esd 0.02.

CCD peptide-linking components get group "peptide", so mmtbx links them
into the chain like standard amino acids.

`missing_dictionaries(model, restraint_objects)` is called by
monomer_library.process_model; the generated texts are kept on the model
as `qr_phenix_generated_dictionaries` ({resname: CIF text}).
"""

import itertools

import numpy as np


BOND_ESD = 0.02
ANGLE_ESD = 3.0
PLANE_ESD = 0.02
# X-ray (electron density) X-H distance = nuclear distance - offset (A)
XH_XRAY_OFFSET = {"C": 0.12, "N": 0.15, "O": 0.15, "S": 0.14}

_ORDER = {"SING": 1, "DOUB": 2, "TRIP": 3, "AROM": 1.5}
_TYPE_WORD = {1: "single", 2: "double", 3: "triple", 1.5: "aromatic"}


class Component:
    """A CCD component reduced to the atoms present in the model."""

    def __init__(self, resname, names, charges=None):
        import biotite.structure as struc
        import biotite.structure.info as info
        ref = info.residue(resname)
        all_names = [str(n) for n in ref.atom_name]
        keep = [i for i, n in enumerate(all_names) if n in set(names)]
        index = {i: k for k, i in enumerate(keep)}
        self.resname = resname
        self.names = [all_names[i] for i in keep]
        self.elements = [str(ref.element[i]).upper() for i in keep]
        self.xyz = np.asarray(ref.coord[keep], dtype=float)
        self.charges = [int((charges or {}).get(n, 0)) for n in self.names]
        aromatic_types = {struc.BondType.AROMATIC_SINGLE, struc.BondType.AROMATIC_DOUBLE,
                          struc.BondType.AROMATIC}
        order = {struc.BondType.SINGLE: 1, struc.BondType.DOUBLE: 2,
                 struc.BondType.TRIPLE: 3, struc.BondType.AROMATIC_SINGLE: 1.5,
                 struc.BondType.AROMATIC_DOUBLE: 1.5, struc.BondType.AROMATIC: 1.5}
        self.bonds = []                     # (i, j, order)
        for i, j, t in ref.bonds.as_array():
            if int(i) in index and int(j) in index:
                bt = struc.BondType(t)
                o = 1.5 if bt in aromatic_types else order.get(bt, 1)
                self.bonds.append((index[int(i)], index[int(j)], o))
        self.neighbours = {k: [] for k in range(len(self.names))}
        for i, j, o in self.bonds:
            self.neighbours[i].append((j, o))
            self.neighbours[j].append((i, o))
        stereo = _ccd_column(info, resname, "pdbx_stereo_config")
        self.stereo = {all_names[i]: s for i, s in enumerate(stereo or [])}
        kind = _ccd_value(info, resname, "chem_comp", "type").upper()
        self.full_name = _ccd_value(info, resname, "chem_comp", "name") or resname
        if "PEPTIDE LINKING" in kind:
            self.group = "peptide"
        elif "DNA LINKING" in kind:
            self.group = "DNA"
        elif "RNA LINKING" in kind:
            self.group = "RNA"
        else:
            self.group = "non-polymer"
        self.rings = _ring_sizes(self)

    def n_h(self, i):
        return sum(1 for j, _ in self.neighbours[i] if self.elements[j] == "H")

    def heavy(self, i):
        return [(j, o) for j, o in self.neighbours[i] if self.elements[j] != "H"]

    def aromatic(self, i):
        return any(o == 1.5 for _, o in self.neighbours[i])

    def max_order(self, i):
        return max([o for _, o in self.neighbours[i]] or [0])


def _ccd_column(info, resname, column):
    try:
        return [str(x) for x in info.get_from_ccd("chem_comp_atom", resname, column).as_array()]
    except Exception:
        return None


def _ccd_value(info, resname, category, column):
    try:
        return str(info.get_from_ccd(category, resname, column).as_array()[0])
    except Exception:
        return ""


def _ring_sizes(comp):
    """{atom index: smallest aromatic ring size} (rings of aromatic bonds)."""
    arom = {i: [j for j, o in comp.neighbours[i] if o == 1.5] for i in comp.neighbours}
    sizes = {}
    for start in arom:
        if not arom[start]:
            continue
        # shortest cycle through `start` by breadth-first search
        best = None
        for first in arom[start]:
            seen, frontier, depth = {start, first}, [first], 1
            while frontier and (best is None or depth < best):
                depth += 1
                nxt = []
                for a in frontier:
                    for b in arom[a]:
                        if b == start and depth > 2:
                            best = depth if best is None else min(best, depth)
                        elif b not in seen:
                            seen.add(b)
                            nxt.append(b)
                frontier = nxt
        if best is not None:
            sizes[start] = best
    return sizes


def energy_type(comp, i):
    """Simple CCP4 energy type of atom i."""
    el, nh = comp.elements[i], comp.n_h(i)
    order = comp.max_order(i)
    if el == "C":
        if comp.aromatic(i):
            ring = "5" if comp.rings.get(i) == 5 else "6"
            return ("CR1" + ring) if nh else ("CR" + ring)
        if order == 3 or sum(1 for _, o in comp.neighbours[i] if o == 2) == 2:
            return "CSP"
        if order == 2:
            return ("C", "C1", "C2")[min(nh, 2)]
        return ("CT", "CH1", "CH2", "CH3", "CH3")[min(nh, 4)]
    if el == "N":
        if comp.aromatic(i):
            ring = "5" if comp.rings.get(i) == 5 else "6"
            return ("NR1" + ring) if nh else ("NR" + ring)
        if comp.charges[i] > 0 and order == 1 and nh >= 3:
            return "NT3"
        conjugated = order >= 2 or any(
            comp.max_order(j) >= 1.5 for j, _ in comp.heavy(i)) or \
            (comp.group == "peptide" and comp.names[i] == "N")
        if conjugated:
            return ("N", "NH1", "NH2", "NH2")[min(nh, 3)]
        return ("NT", "NT1", "NT2", "NT3")[min(nh, 3)]
    if el == "O":
        if nh == 2:
            return "OH2"
        if nh == 1:
            return "OH1"
        if comp.charges[i] < 0:
            return "OC"
        if len(comp.heavy(i)) >= 2:
            return "O2"
        return "O"
    if el == "S":
        if nh:
            return "SH1"
        if any(comp.elements[j] == "O" for j, _ in comp.heavy(i)):
            return "ST"
        return "S2" if len(comp.heavy(i)) == 2 else "S"
    if el == "H":
        parent = comp.neighbours[i][0][0] if comp.neighbours[i] else None
        if parent is None:
            return "H"
        pt = energy_type(comp, parent)
        return {"CH1": "HCH1", "CH2": "HCH2", "CH3": "HCH3", "C1": "HC1", "C2": "HC1",
                "CR15": "HCR5", "CR16": "HCR6", "NH1": "HNH1", "NH2": "HNH2",
                "NR15": "HNR5", "NR16": "HNH1", "NT1": "HNH1", "NT2": "HNH2",
                "NT3": "HNH1", "OH1": "HOH1", "OH2": "HOH2", "SH1": "HSH1"}.get(pt, "H")
    return el


def _angle(a, b, c):
    u, v = a - b, c - b
    cos = u @ v / (np.linalg.norm(u) * np.linalg.norm(v))
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def _planes(comp):
    """Lists of atom indices that should be coplanar."""
    planes = []
    # aromatic systems: connected aromatic atoms plus their neighbours
    arom = [i for i in comp.neighbours if comp.aromatic(i)]
    done = set()
    for start in arom:
        if start in done:
            continue
        system, stack = set(), [start]
        while stack:
            a = stack.pop()
            if a in system:
                continue
            system.add(a)
            stack += [b for b, o in comp.neighbours[a] if o == 1.5]
        done |= system
        members = set(system)
        for a in system:
            members |= {b for b, _ in comp.neighbours[a]}
        if len(members) >= 4:
            planes.append(sorted(members))
    # other sp2 C/N centres (C=O, C=C, C=N, amide N) with their neighbours
    for i in comp.neighbours:
        if i in done or comp.elements[i] not in ("C", "N"):
            continue
        sp2 = comp.max_order(i) == 2
        if comp.elements[i] == "N" and not sp2:
            sp2 = any(comp.elements[j] == "C" and any(
                comp.elements[k] == "O" and o == 2 for k, o in comp.neighbours[j])
                for j, _ in comp.heavy(i))
        members = [i] + [j for j, _ in comp.neighbours[i]]
        if sp2 and len(members) >= 4:
            planes.append(sorted(members))
    return planes


def _chiral_centres(comp):
    rows = []
    for i, name in enumerate(comp.names):
        if comp.stereo.get(name, "N") not in ("R", "S"):
            continue
        nbrs = sorted(comp.neighbours[i], key=lambda x: comp.elements[x[0]] == "H")
        if len(nbrs) < 3:
            continue
        a, b, c = (j for j, _ in nbrs[:3])
        v = comp.xyz[i]
        vol = np.dot(comp.xyz[a] - v, np.cross(comp.xyz[b] - v, comp.xyz[c] - v))
        rows.append((name, comp.names[a], comp.names[b], comp.names[c],
                     "positiv" if vol > 0 else "negativ"))
    return rows


def _q(name):
    # CIF-quote atom names with quotes or leading digits/special characters
    if "'" in name:
        return '"%s"' % name
    if name[0] in "_#$;[]" or " " in name or name in (".", "?"):
        return "'%s'" % name
    return name


def dictionary_text(comp):
    """CCP4 monomer CIF text for a Component."""
    rid = comp.resname
    n_all = len(comp.names)
    n_heavy = sum(1 for e in comp.elements if e != "H")
    out = ["# generated by qr_phenix from the CCD entry %s (model atoms only)" % rid,
           "data_comp_list", "loop_", "_chem_comp.id", "_chem_comp.three_letter_code",
           "_chem_comp.name", "_chem_comp.group", "_chem_comp.number_atoms_all",
           "_chem_comp.number_atoms_nh", "_chem_comp.desc_level",
           "%s %s '%s' %s %d %d ." % (rid, rid, comp.full_name.replace("'", ""),
                                      comp.group, n_all, n_heavy),
           "", "data_comp_%s" % rid, "loop_"]
    out += ["_chem_comp_atom.%s" % t for t in (
        "comp_id", "atom_id", "type_symbol", "type_energy", "charge", "x", "y", "z")]
    for i, name in enumerate(comp.names):
        x, y, z = comp.xyz[i]
        out.append("%s %s %s %s %d %.3f %.3f %.3f" % (
            rid, _q(name), comp.elements[i], energy_type(comp, i), comp.charges[i], x, y, z))
    if comp.bonds:
        out += ["", "loop_"] + ["_chem_comp_bond.%s" % t for t in (
            "comp_id", "atom_id_1", "atom_id_2", "type", "value_dist", "value_dist_esd",
            "value_dist_neutron")]
        for i, j, o in comp.bonds:
            d = float(np.linalg.norm(comp.xyz[i] - comp.xyz[j]))
            xray = d
            pair = {comp.elements[i], comp.elements[j]}
            if "H" in pair and len(pair) == 2:
                heavy_el = (pair - {"H"}).pop()
                xray = d - XH_XRAY_OFFSET.get(heavy_el, 0.0)
            out.append("%s %s %s %s %.3f %.3f %.3f" % (
                rid, _q(comp.names[i]), _q(comp.names[j]), _TYPE_WORD[o], xray, BOND_ESD, d))
    angles = []
    for b in comp.neighbours:
        for (a, _), (c, _) in itertools.combinations(comp.neighbours[b], 2):
            angles.append((a, b, c, _angle(comp.xyz[a], comp.xyz[b], comp.xyz[c])))
    if angles:
        out += ["", "loop_"] + ["_chem_comp_angle.%s" % t for t in (
            "comp_id", "atom_id_1", "atom_id_2", "atom_id_3", "value_angle",
            "value_angle_esd")]
        for a, b, c, v in angles:
            out.append("%s %s %s %s %.2f %.1f" % (
                rid, _q(comp.names[a]), _q(comp.names[b]), _q(comp.names[c]), v, ANGLE_ESD))
    chir = _chiral_centres(comp)
    if chir:
        out += ["", "loop_"] + ["_chem_comp_chir.%s" % t for t in (
            "comp_id", "id", "atom_id_centre", "atom_id_1", "atom_id_2", "atom_id_3",
            "volume_sign")]
        for k, row in enumerate(chir):
            out.append("%s chir_%d %s" % (rid, k + 1, " ".join(_q(x) for x in row[:4])
                                          + " " + row[4]))
    planes = _planes(comp)
    if planes:
        out += ["", "loop_"] + ["_chem_comp_plane_atom.%s" % t for t in (
            "comp_id", "plane_id", "atom_id", "dist_esd")]
        for k, members in enumerate(planes):
            for i in members:
                out.append("%s plan-%d %s %.3f" % (rid, k + 1, _q(comp.names[i]), PLANE_ESD))
    return "\n".join(out) + "\n"


def _given_comp_ids(restraint_objects):
    ids = set()
    for _, cif_model in restraint_objects or []:
        for key in cif_model.keys():
            if key.lower().startswith("comp_") and key.lower() != "comp_list":
                ids.add(key[len("comp_"):].upper())
    return ids


def _residue_atoms(hierarchy):
    """{resname: ({atom names}, {name: formal charge})} over all residues."""
    result = {}
    for ag in hierarchy.atom_groups():
        name = ag.resname.strip().upper()
        names, charges = result.setdefault(name, (set(), {}))
        for a in ag.atoms():
            names.add(a.name.strip())
            try:
                q = a.charge_as_int()
            except Exception:   # malformed charge column: no charge given
                q = 0
            if q:
                charges[a.name.strip()] = q
    return result


def missing_dictionaries(model, library_has, monomer_server, restraint_objects=(),
                         log=None):
    """[(name, iotbx.cif model)] for residues of `model` (mmtbx.model.manager)
    that neither the monomer library nor `restraint_objects` cover and that
    the CCD has.  Records {resname: CIF text} on the model.

    library_has(resname) -> bool and monomer_server() come from the caller
    (qr_phenix.monomer_library), which this module must not import."""
    import iotbx.cif
    generated = {}
    given = _given_comp_ids(restraint_objects)
    server = None
    for resname, (names, charges) in sorted(_residue_atoms(model.get_hierarchy()).items()):
        if resname in given or len(names) < 2 or library_has(resname):
            continue
        if server is None:
            server = monomer_server()
        try:
            if server.get_comp_comp_id_direct(resname) is not None:
                continue
        except Exception:
            pass
        try:
            comp = Component(resname, names, charges)
        except Exception:
            continue                        # not in the CCD: left to mmtbx's error
        if set(comp.names) != names:
            continue                        # atoms the CCD does not know
        generated[resname] = dictionary_text(comp)
    model.qr_phenix_generated_dictionaries = generated
    objects = []
    for resname, text in generated.items():
        if log is not None:
            print("qr_phenix: generated a restraint dictionary for %s from the CCD"
                  % resname, file=log)
        objects.append(("qr_phenix_ccd_%s.cif" % resname,
                        iotbx.cif.reader(input_string=text).model()))
    return objects

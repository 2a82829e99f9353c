"""The engine contract: an ASE calculator (eV, eV/A) plus settings.

Every quantum engine in qr_phenix is an ASE calculator, so any calculator a
user already has (ASE's own, a machine-learned potential, a cluster client)
plugs in unchanged.  This module turns one calculation into the energy and
gradient the restraints need, in kcal/mol and kcal/mol/A, and refuses to hand
a minimiser NaN or an unconverged result.
"""

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, CalculationFailed
from libtbx.utils import Sorry

from qr_phenix import units


class EngineError(Sorry):
    """A quantum calculation failed in a way the user can act on (SCF not
    converged after all retries, engine crashed, non-finite result)."""

    __module__ = Exception.__module__


class EngineUnavailable(Sorry):
    """The engine's program or package is not installed (message has the fix)."""

    __module__ = Exception.__module__


@dataclass
class EngineSettings:
    """What every engine factory receives.  Fields an engine does not use are
    ignored by it; the PHIL scope `qm_restraints.engine_options` maps 1:1."""

    name: str = "gfn2"
    charge: int = 0
    multiplicity: int = 1
    threads: int = 1
    #: implicit solvent ("water", ...) or None for gas phase
    solvent: Optional[str] = None
    #: electronic temperature in K (tblite/xtb); raised by the retry path
    electronic_temperature: float = 300.0
    max_iterations: int = 250
    #: xTB numerical accuracy (tblite/xtb): SCC convergence and integral
    #: thresholds scale with it; larger is looser and faster
    accuracy: float = 1.0
    #: MOPAC: linear-scaling localized-orbital SCF
    mozyme: bool = False
    #: PySCF
    basis: str = "def2-svp"
    xc: str = "b3lyp"
    dispersion: Optional[str] = "d3bj"
    density_fit: bool = True
    #: "package.module:ClassName" or "package.module.ClassName" (engine "ase")
    calculator: Optional[str] = None
    calculator_kwargs: dict = field(default_factory=dict)
    #: local weights file for machine-learned potentials
    model_path: Optional[str] = None
    #: explicit path of an engine binary (xtb, mopac); default: search PATH
    binary: Optional[str] = None
    #: scratch directory for file-based engines; default: a private tempdir
    workdir: Optional[str] = None


@dataclass
class EnergyGradient:
    energy: float          # kcal/mol
    gradient: np.ndarray   # (n, 3) kcal/mol/A


def energy_and_gradient(calc: Calculator, symbols, positions) -> EnergyGradient:
    """One engine evaluation in restraint units.

    positions in Angstrom, shape (n, 3).  The calculator is reused between
    calls (so in-process engines keep their wavefunction as a restart).
    """
    positions = np.asarray(positions, dtype=float).reshape(-1, 3)
    atoms = Atoms(symbols=list(symbols), positions=positions, pbc=False)
    atoms.calc = calc
    try:
        energy_ev = atoms.get_potential_energy()
        forces = atoms.get_forces()
    except (EngineError, EngineUnavailable):
        raise
    except CalculationFailed as e:
        raise EngineError("%s calculation failed: %s" % (type(calc).__name__, e)) from e
    energy = units.ev_to_kcal_per_mol(float(energy_ev))
    gradient = units.forces_to_gradient_kcal(np.asarray(forces, dtype=float))
    if not np.isfinite(energy) or not np.all(np.isfinite(gradient)):
        raise EngineError(
            "%s returned a non-finite energy or gradient; the geometry is probably"
            " badly distorted (check for clashes) or the SCF diverged."
            % type(calc).__name__)
    return EnergyGradient(energy=energy, gradient=gradient)

"""Pieces every engine calculator shares: electron-count check, binary lookup,
private scratch directories, and the base class that fills ASE results.

Kept out of base.py so the engine contract stays small; nothing here converts
units (qr_phenix/units.py does, on each calculator's parsing line).
"""

import os
import shutil
import tempfile
import weakref

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from qr_phenix.engines.base import EngineError, EngineSettings, EngineUnavailable


def electron_count(numbers, charge):
    return int(np.sum(numbers)) - int(charge)


def check_electrons(numbers, charge, multiplicity, engine):
    """Refuse charge/multiplicity combinations that no wavefunction can have.

    xtb, tblite and MOPAC do not refuse them themselves (measured: tblite and
    xtb run 293 electrons with uhf=0 using fractional occupations, MOPAC
    silently switches to a UHF doublet), so a wrong charge would give a
    plausible-looking but meaningless energy.
    """
    n_el = electron_count(numbers, charge)
    multiplicity = int(multiplicity)
    if multiplicity < 1:
        raise EngineError("%s: multiplicity must be >= 1 (got %d)." % (engine, multiplicity))
    unpaired = multiplicity - 1
    if n_el < unpaired or (n_el - unpaired) % 2 != 0:
        raise EngineError(
            "%s: %d electrons (total charge %d) cannot have multiplicity %d: an"
            " odd electron count needs an even multiplicity (2, 4, ...) and an even"
            " one an odd multiplicity (1, 3, ...). Usually the charge is wrong:"
            " check protonation states, missing hydrogens and metal charges, or"
            " set the multiplicity." % (engine, n_el, charge, multiplicity))
    return n_el


def find_binary(explicit, name, install_hint, engine):
    """Absolute path of an engine program, or EngineUnavailable with the fix."""
    if explicit:
        path = explicit if os.path.sep in explicit else shutil.which(explicit)
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return os.path.abspath(path)
        raise EngineUnavailable(
            "%s: the program %r given as binary= is not an executable file. %s"
            % (engine, explicit, install_hint))
    path = shutil.which(name)
    if path is None:
        raise EngineUnavailable(
            "%s: the program %r is not on PATH. %s" % (engine, name, install_hint))
    return path


def binary_available(settings, name, install_hint):
    """(True, "") if the engine program is found, else (False, why + fix)."""
    try:
        find_binary(settings.binary if settings else None, name, install_hint, name)
    except EngineUnavailable as e:
        return False, str(e)
    return True, ""


class ScratchDir:
    """A private directory, removed when its owner is garbage-collected.

    File-based engines run in it with subprocess(cwd=...), so the process
    never changes directory and parallel calculators never share files.
    """

    def __init__(self, parent=None, prefix="qr_"):
        if parent:
            os.makedirs(parent, exist_ok=True)
        self.path = tempfile.mkdtemp(prefix=prefix, dir=parent)
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.path, True)

    def file(self, name):
        return os.path.join(self.path, name)

    def remove(self, *names):
        for name in names:
            try:
                os.remove(self.file(name))
            except FileNotFoundError:
                pass

    def cleanup(self):
        self._finalizer()


def tail(text, n=15):
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return "\n".join(lines[-n:])


class EngineCalculator(Calculator):
    """ASE calculator base for qr_phenix engines: energy (eV) and forces (eV/A).

    Subclasses implement `_compute(numbers, positions) -> (energy_ev, forces)`
    with positions in Angstrom.  This class checks the electron count and
    refuses non-finite results, so no engine can hand back NaN.
    """

    implemented_properties = ["energy", "forces"]
    engine_name = "engine"

    def __init__(self, settings: EngineSettings = None, **kwargs):
        super().__init__(**kwargs)
        self.settings = settings if settings is not None else EngineSettings()
        #: human-readable notes about retries of the last calculation
        self.retry_log = []

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        numbers = self.atoms.get_atomic_numbers()
        positions = self.atoms.get_positions()
        if "numbers" in system_changes:
            self._reset_for_new_atoms()
        check_electrons(numbers, self.settings.charge, self.settings.multiplicity,
                        self.engine_name)
        self.retry_log = []
        energy, forces = self._compute(numbers, positions)
        forces = np.asarray(forces, dtype=float).reshape(len(numbers), 3)
        if not np.isfinite(energy) or not np.all(np.isfinite(forces)):
            raise EngineError(
                "%s returned a non-finite energy or gradient; the geometry is"
                " probably badly distorted (atoms on top of each other)."
                % self.engine_name)
        self.results["energy"] = float(energy)
        self.results["free_energy"] = float(energy)
        self.results["forces"] = forces

    def _reset_for_new_atoms(self):
        """Drop anything tied to the previous atom list (restart data)."""

    def _compute(self, numbers, positions):
        raise NotImplementedError


def close_contacts(positions, cutoff=0.7, limit=5):
    """'atoms i-j d A' for the closest pairs under `cutoff`, for error messages."""
    from scipy.spatial import cKDTree

    positions = np.asarray(positions, dtype=float)
    pairs = sorted(cKDTree(positions).query_pairs(cutoff))
    if not pairs:
        return ""
    dist = [(np.linalg.norm(positions[i] - positions[j]), i, j) for i, j in pairs]
    dist.sort()
    shown = ", ".join("%d-%d %.2f A" % (i + 1, j + 1, d) for d, i, j in dist[:limit])
    return " Close contacts (atom numbers from 1): %s%s." % (
        shown, " and %d more" % (len(dist) - limit) if len(dist) > limit else "")


DISTORTED_GEOMETRY_HINT = (
    " The usual cause is a badly distorted geometry (clashing or overlapping"
    " atoms) or a wrong total charge/multiplicity. Regularise the model first"
    " (a few cycles of geometry-restraints-only minimisation), check the charge,"
    " and for large charged or dipolar QM regions use implicit solvent"
    " (solvent=water).")

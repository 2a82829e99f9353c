"""Hartree-Fock and DFT through PySCF, as an ASE calculator (eV, eV/A).

Uses a gradient scanner (`as_scanner()`): each call starts the SCF from the
previous density.  Dispersion (D3/D3BJ/D4) comes from the `pyscf-dispersion`
package (`mf.disp`), whose gradient PySCF adds to the SCF gradient.  An SCF
that does not converge is retried from a fresh guess with a level shift and
damping, then with the second-order (Newton) solver, before EngineError.

Cost: about 10 min per HF/6-31G+D3 gradient of the 94-atom helix on 2 CPU
cores, hours per refinement, so this engine is for small QM regions or
one-off checks.
"""

import importlib.util
import logging
import os

import numpy as np

from qr_phenix import units
from qr_phenix.engines._common import (
    DISTORTED_GEOMETRY_HINT, EngineCalculator, ScratchDir, close_contacts)
from qr_phenix.engines.base import EngineError, EngineUnavailable

log = logging.getLogger(__name__)

#: PySCF's own memory cap, MB (it spills to the scratch dir beyond it)
MAX_MEMORY_MB = 4000


def available(settings=None):
    if importlib.util.find_spec("pyscf") is None:
        return False, "PySCF is not installed: pip install pyscf pyscf-dispersion"
    if settings is not None and settings.dispersion and not _have_dispersion():
        return False, ("dispersion=%s needs the package pyscf-dispersion: pip install"
                       " pyscf-dispersion (or set dispersion=None)" % settings.dispersion)
    return True, ""


def _have_dispersion():
    try:
        return importlib.util.find_spec("pyscf.dispersion") is not None
    except ModuleNotFoundError:
        return False


def _load():
    # PySCF ships its own libgomp, which reads this when pyscf is first
    # imported: idle OpenMP threads must not spin against other processes.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import pyscf  # noqa: F401


class PySCFCalculator(EngineCalculator):
    """HF (method='hf') or Kohn-Sham DFT (method='dft', settings.xc)."""

    def __init__(self, settings, method="hf", grid_level=None, grid_response=True, **kwargs):
        super().__init__(settings, **kwargs)
        #: DFT integration grid (PySCF default level 3) and whether the
        #: gradient includes the moving-grid term.  Without it the gradient
        #: is not the derivative of the energy (measured 2.4e-3 relative
        #: error on acetamide, B3LYP/6-31G, level 3); with it, exact, at
        #: about 4x the gradient cost on that molecule.
        self.grid_level = grid_level
        self.grid_response = grid_response
        if method not in ("hf", "dft"):
            raise EngineError("pyscf: method must be 'hf' or 'dft', not %r" % method)
        ok, reason = available(settings)
        if not ok:
            raise EngineUnavailable(reason)
        _load()
        self.method = method
        disp = ("-" + settings.dispersion.upper()) if settings.dispersion else ""
        self.engine_name = "PySCF %s%s/%s" % (
            "HF" if method == "hf" else settings.xc.upper(), disp, settings.basis)
        self.scratch = ScratchDir(settings.workdir, prefix="qr_pyscf_")
        self._scanner = None

    def _reset_for_new_atoms(self):
        self._scanner = None

    def _mole(self, numbers, positions):
        from pyscf import gto
        s = self.settings
        try:
            return gto.M(atom=[(int(z), tuple(p)) for z, p in zip(numbers, positions)],
                         unit="Angstrom", basis=s.basis, charge=int(s.charge),
                         spin=int(s.multiplicity) - 1, verbose=0, max_memory=MAX_MEMORY_MB)
        except Exception as e:
            raise EngineError("%s: could not build the molecule: %s" % (self.engine_name, e)) from e

    def _scf(self, mol, variant):
        from pyscf import dft, scf
        s = self.settings
        open_shell = s.multiplicity > 1
        if self.method == "hf":
            mf = scf.UHF(mol) if open_shell else scf.RHF(mol)
        else:
            mf = dft.UKS(mol) if open_shell else dft.RKS(mol)
            mf.xc = s.xc
            if self.grid_level is not None:
                mf.grids.level = int(self.grid_level)
        if s.density_fit:
            mf = mf.density_fit()
        if s.dispersion:
            mf.disp = s.dispersion
        mf.chkfile = None
        mf.conv_tol = 1e-10      # tight: gradients are differentiated energies
        mf.conv_tol_grad = 1e-6
        mf.max_cycle = s.max_iterations
        if variant == "level shift":
            mf.level_shift = 0.3
            mf.damp = 0.5
            mf.max_cycle = max(300, s.max_iterations)
        elif variant == "newton":
            mf = mf.newton()
            mf.max_cycle = max(100, s.max_iterations)
        return mf

    def _run(self, mol, variant):
        from pyscf import lib
        if variant == "warm" and self._scanner is not None:
            scanner = self._scanner
        else:
            grad = self._scf(mol, variant).nuc_grad_method()
            if self.method == "dft":
                grad.grid_response = bool(self.grid_response)
            scanner = grad.as_scanner()
        old_tmp = lib.param.TMPDIR
        lib.param.TMPDIR = self.scratch.path
        try:
            energy, gradient = scanner(mol)
        finally:
            lib.param.TMPDIR = old_tmp
        return scanner, energy, gradient, bool(scanner.base.converged)

    def _compute(self, numbers, positions):
        from pyscf import lib
        lib.num_threads(max(1, int(self.settings.threads)))
        mol = self._mole(numbers, positions)
        variants = (["warm"] if self._scanner is not None else []) + [
            "default guess", "level shift", "newton"]
        errors = []
        for variant in variants:
            try:
                scanner, energy, gradient, converged = self._run(mol, variant)
            except Exception as e:
                errors.append("%s: %s" % (variant, e))
                continue
            if not converged or not np.isfinite(energy):
                errors.append("%s: SCF not converged" % variant)
                continue
            self._scanner = scanner
            if errors:
                self.retry_log = errors + ["converged with %s" % variant]
                log.warning("%s: SCF converged only with %s", self.engine_name, variant)
            energy_ev = energy * units.EV_PER_HARTREE
            forces = -np.asarray(gradient) * (units.EV_PER_HARTREE / units.ANGSTROM_PER_BOHR)
            return energy_ev, forces
        self._scanner = None
        self.retry_log = errors
        raise EngineError("%s: SCF failed after %d attempts (%s).%s%s" % (
            self.engine_name, len(errors), "; ".join(errors), close_contacts(positions),
            DISTORTED_GEOMETRY_HINT))


def factory(method):
    def make(settings):
        return PySCFCalculator(settings, method=method)
    return make

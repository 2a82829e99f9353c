"""GFN2-xTB / GFN1-xTB in-process through tblite's Python interface.

Threads and BLAS (measured on this project's 2-core VM, tblite 0.8.0 wheel):

* The wheel links its own reference BLAS/LAPACK.  Loading the system OpenBLAS
  (Debian `libopenblas0`) with RTLD_GLOBAL *before* tblite is imported makes
  tblite's dgemm/dsyevd resolve to OpenBLAS: identical energies (to 1e-10 Eh)
  and 2.7x faster at 94 atoms, 4x at 376.  It is loaded at `import qr_phenix`
  (qr_phenix/__init__.py: loaded late it crashed tblite); `BLAS_STATUS` says
  what happened.  QR_PHENIX_TBLITE_BLAS=/path/lib.so picks another library,
  =none disables.
* More than one OpenMP thread gives WRONG energies with the tblite 0.8.0
  wheel on some machines (reproduced here inside the test suite: -171.378 instead of
  -171.681 Eh for the helix with 2 threads, while the same call alone was
  right).  tblite therefore always runs on 1 thread; settings.threads > 1 is
  ignored with a warning (parallelism comes from processes: fragments,
  benchmark jobs), OpenBLAS is kept serial, and OMP_WAIT_POLICY defaults to
  PASSIVE so idle threads do not spin against
  other processes (spinning made 2 threads 4-7x slower on a busy machine).
"""

import collections
import ctypes
import logging

import numpy as np

from qr_phenix import units
from qr_phenix.engines._common import (
    DISTORTED_GEOMETRY_HINT, EngineCalculator, close_contacts, tail)
from qr_phenix.engines.base import EngineError, EngineUnavailable
from qr_phenix.threads import set_process_threads

log = logging.getLogger(__name__)

METHODS = {"gfn2": "GFN2-xTB", "gfn1": "GFN1-xTB"}


#: what happened to the BLAS preload ("not tried" until tblite is loaded)
BLAS_STATUS = "not tried"
_interface = None
_openblas = None
_gomp = None

#: electronic temperature used by the last retry step (0.01 Eh, ~3158 K).
#: Energies at another electronic temperature lie on another surface: once a
#: calculator needed it, it keeps it for the rest of the run (logged once),
#: so a line search never mixes the two.
SMEARING_TEMPERATURE_K = 0.01 / units.HARTREE_PER_KELVIN


def available():
    import importlib.util
    if importlib.util.find_spec("tblite") is None:
        return False, ("tblite is not installed: pip install tblite "
                       "(or pip install qr_phenix[tblite])")
    return True, ""


def _preload_blas():
    """The system OpenBLAS is loaded at `import qr_phenix` (see there) or not
    at all; here we only record what tblite will use."""
    global BLAS_STATUS, _openblas
    import qr_phenix
    _openblas = qr_phenix.OPENBLAS
    BLAS_STATUS = qr_phenix.OPENBLAS_STATUS
    if _openblas is None:
        BLAS_STATUS += ": tblite's bundled reference BLAS is used"


def _load(threads):
    """Import tblite once, after setting up threads and BLAS."""
    global _interface, _gomp
    if _interface is not None:
        return _interface
    # Read by libgomp when it is first loaded; per-call pinning is below.
    set_process_threads(threads)
    _preload_blas()
    try:
        from tblite import interface
    except ImportError as e:
        raise EngineUnavailable(
            "tblite could not be imported (%s): pip install tblite" % e) from e
    try:
        _gomp = ctypes.CDLL("libgomp.so.1")
    except OSError:
        _gomp = None
    _interface = interface
    return interface


def _pin_threads(threads):
    threads = max(1, int(threads))
    if _gomp is not None:
        _gomp.omp_set_num_threads(threads)
    if _openblas is not None and hasattr(_openblas, "openblas_set_num_threads"):
        # threaded OpenBLAS inside tblite's OpenMP regions gave wrong energies
        # (-171.378 vs -171.681 Eh for the helix with 2 threads): BLAS stays serial
        _openblas.openblas_set_num_threads(1)


class TBLiteCalculator(EngineCalculator):
    """tblite GFN-xTB as an ASE calculator (eV, eV/A).

    The tblite object is built once per atom list; later calls update the
    positions in place and restart the SCC from the previous wavefunction.
    """

    def __init__(self, settings, method="gfn2", **kwargs):
        super().__init__(settings, **kwargs)
        if method not in METHODS:
            raise EngineError("tblite: unknown method %r (use %s)"
                              % (method, ", ".join(METHODS)))
        self.method = method
        self.engine_name = "tblite %s" % METHODS[method]
        self._tb = None
        self._result = None
        self._messages = collections.deque(maxlen=50)
        #: electronic temperature (K) a retry raised for the rest of the run
        self.raised_temperature = None
        if settings.threads > 1:
            log.warning("tblite runs on 1 thread: more threads give wrong energies with"
                        " this tblite build (use processes: parallel.nproc)")
        _load(1)

    def _reset_for_new_atoms(self):
        self._tb = None
        self._result = None

    def _build(self, numbers, positions_bohr):
        interface = _load(1)
        s = self.settings
        try:
            tb = interface.Calculator(
                METHODS[self.method], numbers, positions_bohr,
                charge=float(s.charge), uhf=int(s.multiplicity) - 1,
                color=False, logger=self._messages.append)
            tb.set("verbosity", 0)
            tb.set("accuracy", float(s.accuracy))
            if s.solvent:
                model, _, solvent = s.solvent.rpartition(":")
                model = (model or "alpb").lower()
                if model not in ("alpb", "gbsa"):
                    raise EngineError(
                        "tblite: solvent=%r: use a solvent name like 'water', or"
                        " 'alpb:water' / 'gbsa:water'" % s.solvent)
                tb.add("%s-solvation" % model, solvent)
        except EngineError:
            raise
        except Exception as e:
            raise EngineError("%s could not be set up: %s" % (self.engine_name, e)) from e
        return tb

    def _attempts(self):
        s = self.settings
        temperature = self.raised_temperature or s.electronic_temperature
        base = dict(max_iter=s.max_iterations, temperature=temperature, damping=0.4)
        steps = []
        if self._result is not None:
            steps.append(("restart from previous wavefunction", True, base))
        steps.append(("fresh guess", False, base))
        steps.append(("fresh guess, 1000 iterations, damping 0.2", False,
                      dict(base, max_iter=max(1000, s.max_iterations), damping=0.2)))
        if temperature < SMEARING_TEMPERATURE_K:
            steps.append(("electronic temperature %.0f K (Fermi smearing)"
                          % SMEARING_TEMPERATURE_K, False,
                          dict(base, max_iter=max(1000, s.max_iterations), damping=0.2,
                               temperature=SMEARING_TEMPERATURE_K)))
        return steps

    def _keep_temperature(self, temperature):
        """A retry at a higher electronic temperature converged: every later
        calculation of this calculator uses it (one energy surface per run)."""
        self.raised_temperature = temperature
        note = ("electronic temperature raised from %.0f K to %.0f K for the rest of the"
                " run (one energy surface)" % (self.settings.electronic_temperature,
                                               temperature))
        self.retry_log.append(note)
        log.warning("%s: SCC converged only at %.0f K: %s", self.engine_name, temperature,
                    note)

    def _compute(self, numbers, positions):
        positions_bohr = positions / units.ANGSTROM_PER_BOHR
        if self._tb is None:
            self._tb = self._build(numbers, positions_bohr)
        else:
            self._tb.update(positions_bohr)
        _pin_threads(1)
        errors = []
        for label, restart, opt in self._attempts():
            tb = self._tb
            tb.set("max-iter", int(opt["max_iter"]))
            tb.set("mixer-damping", float(opt["damping"]))
            # tblite wants the electronic temperature in Hartree.
            tb.set("temperature", opt["temperature"] * units.HARTREE_PER_KELVIN)
            try:
                result = tb.singlepoint(self._result if restart else None)
                energy = result.get("energy")
                gradient = result.get("gradient")
            except Exception as e:
                self._result = None  # a failed SCC leaves no usable restart
                errors.append("%s: %s" % (label, e))
                self.retry_log.append("%s failed: %s" % (label, e))
                continue
            if not np.isfinite(energy) or not np.all(np.isfinite(gradient)):
                self._result = None
                errors.append("%s: non-finite result" % label)
                continue
            self._result = result
            if errors:
                self.retry_log.append("converged with %s" % label)
            if opt["temperature"] != (self.raised_temperature or
                                      self.settings.electronic_temperature):
                self._keep_temperature(opt["temperature"])
            elif errors:
                log.warning("%s: SCC converged only with %s", self.engine_name, label)
            energy_ev = energy * units.EV_PER_HARTREE
            forces = -gradient * (units.EV_PER_HARTREE / units.ANGSTROM_PER_BOHR)
            return energy_ev, forces
        raise EngineError(
            "%s: SCC did not converge after %d attempts (%s).%s%s%s"
            % (self.engine_name, len(errors), "; ".join(errors),
               close_contacts(positions), DISTORTED_GEOMETRY_HINT,
               ("\ntblite output:\n" + tail("\n".join(self._messages)))
               if self._messages else ""))


def factory(method):
    def make(settings):
        ok, reason = available()
        if not ok:
            raise EngineUnavailable(reason)
        return TBLiteCalculator(settings, method=method)
    return make

"""PM7 / PM6-D3H4 / PM6 (optionally MOZYME) through the `mopac` program.

The heat of formation (kcal/mol) and the Cartesian gradients (kcal/mol/A)
are read from the .out file, which carries them to 1e-5 kcal/mol and 1e-6
kcal/mol/A, and converted to eV on the parsing line.  MOZYME's .out prints
gradients to 1e-3 only, so MOZYME runs add AUX(PRECISION=9) and read the
.aux; without MOZYME the .aux (1.3 MB of overlap and density matrices for
the 94-atom helix) costs 13 % of a PM7 gradient (MOPAC 22.0.6, 1 thread:
0.251 s with it, 0.219 s without).  PRECISE stays: without it the same
PM7 call takes 0.184 s, but the gradients depart further from central
differences of the energy (relative): PM6 1.8e-3 instead of 2e-4, PM7 at
a helix geometry off its kinks (0.05 A noise) 4e-4 instead of 3e-5.

Measured on the 94-atom helix (tests/tst_engines.py), relative error of the
analytic gradient against central differences of the energy: PM6 1.7e-4
(exact to the .out's energy digits; 3e-5 from the .aux); PM6-D3H4 4e-4 to
1.1e-3, up to 0.05 kcal/mol/A on H-bonded N, O, H; PM7 8e-3 to 5e-2
depending on the atoms sampled, up to 2.3 kcal/mol/A on a backbone N, where
the finite difference itself changes with the step (the PM7 energy surface
has kinks).  MOZYME adds about 2e-3 of SCF noise.  These are MOPAC's own
gradients (the same parsing gives exact PM6), so prefer pm6 or an xTB engine
where gradient consistency matters.
"""

import logging
import os
import re
import subprocess

import numpy as np
from ase.data import chemical_symbols

from qr_phenix import units
from qr_phenix.engines._common import (
    DISTORTED_GEOMETRY_HINT, EngineCalculator, ScratchDir, binary_available,
    close_contacts, find_binary, tail)
from qr_phenix.engines.base import EngineError
from qr_phenix.threads import child_environment

log = logging.getLogger(__name__)

INSTALL_HINT = ("Install it with `apt-get install mopac` (Debian/Ubuntu) or"
                " `conda install -c conda-forge mopac`, or give its path with binary=.")

METHODS = {"pm7": "PM7", "pm6_d3h4": "PM6-D3H4", "pm6": "PM6"}

_MULTIPLICITY_WORDS = {2: "DOUBLET", 3: "TRIPLET", 4: "QUARTET", 5: "QUINTET",
                       6: "SEXTET", 7: "SEPTET", 8: "OCTET", 9: "NONET"}

#: SCF settings of the single retry after a failed SCF
RETRY_KEYWORDS = "ITRY=2000 SHIFT=20 PULAY"


def available(settings=None):
    return binary_available(settings, "mopac", INSTALL_HINT)


_NUMBER = re.compile(r"[-+]?\d+\.\d*(?:[EeDd][-+]?\d+)?")


def _gradient_array(values, path, natoms):
    if len(values) != 3 * natoms:
        raise ValueError("gradients in %s: %d values, expected %d"
                         % (path, len(values), 3 * natoms))
    return np.array(values).reshape(natoms, 3)


class UnreadableGradientTable(ValueError):
    """The .out ended with its result, but the gradient table cannot be read."""


def read_out(path, natoms):
    """(heat of formation kcal/mol, gradient (n, 3) kcal/mol/A) from a .out
    file of a 1SCF GRADIENTS run without MOZYME: the FINAL POINT AND
    DERIVATIVES table, rows `n atom El CARTESIAN X value gradient KCAL/ANGSTROM`."""
    with open(path, errors="replace") as f:
        text = f.read()
    hof = re.findall(r"FINAL HEAT OF FORMATION =\s*(\S+)\s*KCAL/MOL", text)
    table = text.rfind("FINAL  POINT  AND  DERIVATIVES")
    if not hof or table < 0:
        raise ValueError("no final heat of formation and gradients in %s" % path)
    rows = re.findall(r"CARTESIAN [XYZ]\s+\S+\s+(\S+)\s+KCAL/ANGSTROM", text[table:])
    try:
        return float(hof[-1]), _gradient_array([float(v) for v in rows], path, natoms)
    except ValueError as e:
        # a value too wide for its field prints as asterisks: the row no
        # longer matches, or float() refuses it
        raise UnreadableGradientTable(str(e)) from e


def read_aux(path, natoms):
    """(heat of formation kcal/mol, gradient (n, 3) kcal/mol/A) from a .aux file.

    The last HEAT_OF_FORMATION and GRADIENTS blocks are the final ones.
    """
    with open(path) as f:
        text = f.read()
    hof = re.findall(r"HEAT_OF_FORMATION:KCAL/MOL=\s*(\S+)", text)
    if not hof:
        raise ValueError("no HEAT_OF_FORMATION in %s" % path)
    energy = float(hof[-1].replace("D", "E"))
    blocks = re.findall(r"GRADIENTS:KCAL/MOL/ANGSTROM\[(\d+)\]=\s*\n(.*?)(?=\n\s*[A-Z_#])",
                        text, re.S)
    if not blocks:
        raise ValueError("no GRADIENTS block in %s" % path)
    count, body = blocks[-1]
    values = [float(v.replace("D", "E")) for v in _NUMBER.findall(body)]
    if int(count) != 3 * natoms:
        raise ValueError("GRADIENTS block in %s declares %s values, expected %d"
                         % (path, count, 3 * natoms))
    return energy, _gradient_array(values, path, natoms)


class MopacCalculator(EngineCalculator):
    """MOPAC semi-empirical energy and gradient as an ASE calculator (eV, eV/A)."""

    def __init__(self, settings, method="pm7", **kwargs):
        super().__init__(settings, **kwargs)
        if method not in METHODS:
            raise EngineError("mopac: unknown method %r (use %s)"
                              % (method, ", ".join(METHODS)))
        self.method = method
        self.engine_name = "MOPAC %s%s" % (METHODS[method], " MOZYME" if settings.mozyme else "")
        self.binary = find_binary(settings.binary, "mopac", INSTALL_HINT, "mopac")
        self.scratch = ScratchDir(settings.workdir, prefix="qr_mopac_")
        self._proc = None          # the last MOPAC run, for its error message
        if settings.mozyme and settings.multiplicity != 1:
            raise EngineError("MOPAC MOZYME is closed-shell only: multiplicity %d needs"
                              " mozyme=False" % settings.multiplicity)

    def keywords(self, retry=False, aux=False):
        s = self.settings
        words = [METHODS[self.method], "1SCF", "GRADIENTS", "PRECISE",
                 "CHARGE=%d" % int(s.charge), "THREADS=%d" % max(1, int(s.threads))]
        if s.mozyme:
            words.append("MOZYME")
        if aux or s.mozyme:
            words.append("AUX(PRECISION=9)")
        if s.multiplicity > 1:
            if s.multiplicity not in _MULTIPLICITY_WORDS:
                raise EngineError("MOPAC: multiplicity %d is not supported" % s.multiplicity)
            words += ["UHF", _MULTIPLICITY_WORDS[s.multiplicity]]
        if s.solvent:
            if s.solvent.lower() not in ("water", "h2o"):
                raise EngineError("MOPAC: only solvent=water (COSMO, EPS=78.4) is supported")
            words.append("EPS=78.4")
        words.append(RETRY_KEYWORDS if retry else "ITRY=%d" % max(1, s.max_iterations))
        return " ".join(words)

    def _write_input(self, numbers, positions, retry, aux):
        with open(self.scratch.file("job.mop"), "w") as f:
            f.write(self.keywords(retry, aux) + "\nqr_phenix\n\n")
            for z, (x, y, zz) in zip(numbers, positions):
                f.write("%-2s %20.12f 1 %20.12f 1 %20.12f 1\n"
                        % (chemical_symbols[z], x, y, zz))

    def _run_mopac(self, numbers, positions, retry, aux):
        """One MOPAC run; (heat of formation, gradient) from the .aux when
        aux, else from the .out.  Sets self._proc."""
        self.scratch.remove("job.aux", "job.out", "job.arc")
        self._write_input(numbers, positions, retry, aux)
        self._proc = subprocess.run(
            [self.binary, "job.mop"], cwd=self.scratch.path, env=self._env(),
            stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if aux:
            return read_aux(self.scratch.file("job.aux"), len(numbers))
        return read_out(self.scratch.file("job.out"), len(numbers))

    def _run_and_read(self, numbers, positions, retry):
        """The .out, or the .aux where the .out cannot carry the result:
        MOZYME's gradient digits, or a gradient too wide for its field (a
        line search's probe with two helix atoms 0.52 A apart printed
        asterisks).  A run without a result (failed SCF) is not repeated."""
        if not self.settings.mozyme:
            try:
                return self._run_mopac(numbers, positions, retry, aux=False)
            except UnreadableGradientTable:
                pass
        return self._run_mopac(numbers, positions, retry, aux=True)

    def _compute(self, numbers, positions):
        errors = []
        for retry in (False, True):
            try:
                energy, gradient = self._run_and_read(numbers, positions, retry)
            except (OSError, ValueError) as e:
                message = self._error_message(self._proc) or str(e)
                errors.append("%s: %s" % ("retry (%s)" % RETRY_KEYWORDS if retry
                                          else "first SCF", message))
                self.retry_log.append(errors[-1])
                if not _is_scf_failure(message):
                    break  # input or geometry error: a retry would fail the same way
                continue
            if errors:
                self.retry_log.append("converged with %s" % RETRY_KEYWORDS)
                log.warning("%s: SCF converged only with %s", self.engine_name, RETRY_KEYWORDS)
            return energy * units.EV_PER_KCAL_PER_MOL, -gradient * units.EV_PER_KCAL_PER_MOL
        raise EngineError("%s (%s) failed: %s.%s%s" % (
            self.engine_name, self.binary, "; ".join(errors), close_contacts(positions),
            DISTORTED_GEOMETRY_HINT))

    def _env(self):
        return child_environment(self.settings.threads)

    def _error_message(self, proc):
        out = self.scratch.file("job.out")
        text = ""
        if os.path.exists(out):
            with open(out, errors="replace") as f:
                text = f.read()
        keep = []
        for line in text.splitlines():
            # " *  KEYWORD - ..." lines echo the keywords; skip them.
            if line.lstrip().startswith("*"):
                continue
            clean = " ".join(line.strip(" \"+-*").split())
            u = clean.upper()
            if any(k in u for k in ("ERROR", "FAILED", "UNABLE", "TOO CLOSE", "IMPOSSIBLE",
                                    "NOT RECOGNI", "CANNOT", "ILLEGAL")):
                keep.append(clean)
        if not keep:
            streams = proc.stdout + "\n" + proc.stderr if proc is not None else ""
            keep = [tail(text + "\n" + streams, 5)]
        return " | ".join(list(dict.fromkeys(keep))[:4])


def _is_scf_failure(message):
    u = message.upper()
    return "SCF" in u or "SELF-CONSISTENCE" in u


def factory(method):
    def make(settings):
        return MopacCalculator(settings, method=method)
    return make

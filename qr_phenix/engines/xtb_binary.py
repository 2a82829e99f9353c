"""GFN2-xTB and GFN-FF through the `xtb` program (Debian package `xtb`, 6.5.1 here).

Each calculator owns a private scratch directory; xtb runs there with
subprocess(cwd=...) and keeps its `xtbrestart` between calls (about 10 %
faster).  The energy and gradient are read from the Turbomole-style
`gradient` file (Hartree, Hartree/Bohr, 14 significant digits).

xtb leaves old result files in place when it aborts, so they are deleted
before every run; a failed SCC (exit code 1, "did not converge") triggers the
retry path: fresh guess, more iterations, then a higher electronic
temperature.

GFN-FF (`--gfnff`) writes its topology (bonds, rings, charges) to
`gfnff_topo` on the first call and reads it back on later ones, so the
force field keeps one topology, and one smooth energy surface, for as long
as the atom list stays the same.  Setting it up is the expensive part
(prepared 1va7, 3932 atoms: minutes; a 94-atom helix: milliseconds).
"""

import logging
import os
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

INSTALL_HINT = ("Install it with `apt-get install xtb` (Debian/Ubuntu) or"
                " `conda install -c conda-forge xtb`, or give its path with binary=.")

#: electronic temperatures tried by the retry path after more iterations
RETRY_TEMPERATURES_K = (3000.0,)

_OUTPUTS = ("gradient", "energy", "coord.engrad", "charges", "wbo", "xtbtopo.mol",
            ".xtboptok")
#: GFN-FF's topology, kept between calls with the same atoms
_GFNFF_TOPOLOGY = ("gfnff_topo", "gfnff_charges", "gfnff_adjacency")


def available(settings=None):
    return binary_available(settings, "xtb", INSTALL_HINT)


def read_gradient_file(path, natoms):
    """(energy Eh, gradient (n, 3) Eh/Bohr) from the last cycle of a Turbomole
    `gradient` file."""
    with open(path) as f:
        lines = f.read().splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip().startswith("cycle =")]
    if not starts:
        raise ValueError("no 'cycle =' line in %s" % path)
    header = lines[starts[-1]]
    energy = float(header.split("SCF energy =")[1].split()[0])
    block = lines[starts[-1] + 1 + natoms: starts[-1] + 1 + 2 * natoms]
    gradient = np.array([[float(x.replace("D", "E")) for x in line.split()[:3]]
                         for line in block])
    if gradient.shape != (natoms, 3):
        raise ValueError("gradient block in %s has shape %s, expected (%d, 3)"
                         % (path, gradient.shape, natoms))
    return energy, gradient


class XTBBinaryCalculator(EngineCalculator):
    """`xtb --gfn 2 --grad` (or `--gfnff` with gfn="ff") as an ASE calculator
    (eV, eV/A)."""

    def __init__(self, settings, gfn=2, **kwargs):
        super().__init__(settings, **kwargs)
        self.binary = find_binary(settings.binary, "xtb", INSTALL_HINT, "xtb")
        self.gfn = str(gfn)
        self.engine_name = "xtb GFN-FF" if self.gfn == "ff" else "xtb"
        self.scratch = ScratchDir(settings.workdir, prefix="qr_xtb_")

    def _reset_for_new_atoms(self):
        self.scratch.remove("xtbrestart", *_GFNFF_TOPOLOGY)

    def _env(self):
        env = child_environment(self.settings.threads)
        # xtb's own advice: large OpenMP stacks, or big systems segfault.
        env.setdefault("OMP_STACKSIZE", "1G")
        return env

    def _command(self, max_iter, temperature, restart):
        s = self.settings
        method = ["--gfnff"] if self.gfn == "ff" else ["--gfn", self.gfn]
        cmd = [self.binary, "coord.xyz"] + method + ["--grad",
               "--chrg", str(int(s.charge)), "--uhf", str(int(s.multiplicity) - 1),
               "--iterations", str(int(max_iter)), "--etemp", "%.1f" % temperature,
               "--acc", "%g" % s.accuracy]
        if not restart:
            cmd.append("--norestart")
        if s.solvent:
            model, _, solvent = s.solvent.rpartition(":")
            model = (model or "alpb").lower()
            if model not in ("alpb", "gbsa"):
                raise EngineError("xtb: solvent=%r: use 'water', 'alpb:water' or"
                                  " 'gbsa:water'" % s.solvent)
            cmd += ["--" + model, solvent]
        return cmd

    def _attempts(self):
        s = self.settings
        more = max(1000, s.max_iterations)
        if self.gfn == "ff":     # a force field: no SCC to retry
            return [("GFN-FF", s.max_iterations, s.electronic_temperature, True)]
        steps = [("restart from xtbrestart" if os.path.exists(self.scratch.file("xtbrestart"))
                  else "default guess", s.max_iterations, s.electronic_temperature, True),
                 ("fresh guess, %d iterations" % more, more, s.electronic_temperature, False)]
        for t in RETRY_TEMPERATURES_K:
            if t > s.electronic_temperature:
                steps.append(("electronic temperature %.0f K" % t, more, t, False))
        return steps

    def _write_xyz(self, numbers, positions):
        with open(self.scratch.file("coord.xyz"), "w") as f:
            f.write("%d\n\n" % len(numbers))
            for z, (x, y, zz) in zip(numbers, positions):
                f.write("%-2s %20.12f %20.12f %20.12f\n" % (chemical_symbols[z], x, y, zz))

    def _compute(self, numbers, positions):
        self._write_xyz(numbers, positions)
        errors = []
        for label, max_iter, temperature, restart in self._attempts():
            self.scratch.remove(*_OUTPUTS)
            if not restart:
                self.scratch.remove("xtbrestart")
            proc = subprocess.run(
                self._command(max_iter, temperature, restart), cwd=self.scratch.path,
                env=self._env(), stdin=subprocess.DEVNULL, capture_output=True, text=True)
            grad_file = self.scratch.file("gradient")
            if proc.returncode == 0 and os.path.exists(grad_file):
                try:
                    energy, gradient = read_gradient_file(grad_file, len(numbers))
                except (ValueError, IndexError) as e:
                    raise EngineError("xtb: could not read %s: %s" % (grad_file, e)) from e
                if errors:
                    self.retry_log.append("converged with %s" % label)
                    log.warning("xtb: SCC converged only with %s", label)
                energy_ev = energy * units.EV_PER_HARTREE
                forces = -gradient * (units.EV_PER_HARTREE / units.ANGSTROM_PER_BOHR)
                return energy_ev, forces
            message = _error_lines(proc.stdout + "\n" + proc.stderr)
            errors.append("%s: %s" % (label, message))
            self.retry_log.append("%s failed: %s" % (label, message))
            if "converge" not in message.lower():
                break  # not an SCC problem: retrying will not help
        raise EngineError(
            "xtb (%s) failed after %d attempt(s) (%s).%s%s"
            % (self.binary, len(errors), "; ".join(errors), close_contacts(positions),
               DISTORTED_GEOMETRY_HINT))


def _error_lines(text):
    """The lines of xtb output that say why it stopped."""
    keep = [line.strip() for line in text.splitlines()
            if "[ERROR]" in line or line.strip().startswith("-") and ":" in line
            or "error" in line.lower()]
    return " | ".join(keep[:6]) if keep else tail(text, 5).replace("\n", " | ")


def factory(settings):
    return XTBBinaryCalculator(settings)


def factory_gfnff(settings):
    return XTBBinaryCalculator(settings, gfn="ff")

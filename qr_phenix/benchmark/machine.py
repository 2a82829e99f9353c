"""How fast the machine a benchmark ran on is, so that wall times compare.

Wall times are only comparable on the same machine: the same 1va7 QM
refinement took 8.8 s per GFN2 gradient on one 2-core VM and 13.5 s on
another.  Benchmarks therefore record the time of one fixed calculation next
to their own: a GFN2 gradient of a 94-atom poly-Gly helix (1us0 residues
87-99 with hydrogens), one thread, median of warm repeats.
"""

import statistics
import time
from pathlib import Path

import numpy as np

_TEST_DATA = Path(__file__).resolve().parents[2] / "tests" / "data"
#: the reference calculation's model, shipped with the tests
HELIX = _TEST_DATA / "helix" / "a87_99_h.pdb"
#: acetamide (ASE's g2 geometry), for engines too slow for the helix (PySCF)
ACETAMIDE_PDB = _TEST_DATA / "acetamide.pdb"


def read_atoms(path):
    """(element symbols, (n, 3) positions in A) of the ATOM/HETATM records;
    without an element column, the first letter of the atom name."""
    symbols, positions = [], []
    with open(path) as f:
        for line in f:
            if line.startswith(("ATOM", "HETATM")):
                symbols.append(line[76:78].strip() or line[12:16].strip()[0])
                positions.append([float(line[30:38]), float(line[38:46]), float(line[46:54])])
    return symbols, np.array(positions)


def time_gradient(settings, symbols, positions, repeats=5):
    """(first, warm) wall seconds of an engine's energy + gradient: the first
    call (set-up, cold SCF), and the median of `repeats` calls after moving
    every atom by ~0.01 A, as a minimiser step does (in-process engines
    restart from the previous wavefunction, as in refinement).  (None, None,
    reason) when the engine is not available."""
    from qr_phenix.engines import energy_and_gradient, get_engine, make_calculator
    ok, reason = get_engine(settings.name).available(settings)
    if not ok:
        return None, None, reason
    calc = make_calculator(settings)
    t0 = time.perf_counter()
    energy_and_gradient(calc, symbols, positions)
    first = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    times = []
    for _ in range(repeats):
        moved = positions + rng.normal(scale=0.01, size=positions.shape)
        t0 = time.perf_counter()
        energy_and_gradient(calc, symbols, moved)
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times), ""


def gfn2_gradient_seconds(path=HELIX, repeats=5):
    """Warm GFN2 energy + gradient time (s) of the model in `path` on one
    thread; None when GFN2 (tblite) is not installed or the model is missing
    (an installed package without the source tree's tests/data)."""
    from qr_phenix.engines import EngineSettings
    if not Path(path).is_file():
        return None
    return time_gradient(EngineSettings(name="gfn2", threads=1), *read_atoms(path),
                         repeats=repeats)[1]


def speed_line(seconds=None):
    """One line for a benchmark's output (measured now unless given)."""
    if seconds is None:
        seconds = gfn2_gradient_seconds()
    if seconds is None:
        return "machine speed: not measured (needs GFN2 and %s)" % HELIX
    return ("machine speed: GFN2 gradient of the 94-atom 1us0 helix %.3f s"
            " (1 thread, median of 5 warm calls)" % seconds)

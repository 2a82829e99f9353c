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

#: the reference calculation's model, shipped with the tests
HELIX = Path(__file__).resolve().parents[2] / "tests" / "data" / "helix" / "a87_99_h.pdb"


def _read_atoms(path):
    symbols, positions = [], []
    with open(path) as f:
        for line in f:
            if line.startswith(("ATOM", "HETATM")):
                symbols.append(line[76:78].strip())
                positions.append([float(line[30:38]), float(line[38:46]), float(line[46:54])])
    return symbols, np.array(positions)


def gfn2_gradient_seconds(path=HELIX, repeats=5):
    """Median wall time (s) of a warm GFN2 energy + gradient of the model in
    `path` on one thread (the first call, which sets the engine up, is not
    counted); None when GFN2 (tblite) is not installed."""
    from qr_phenix.engines import EngineSettings, energy_and_gradient, get_engine, \
        make_calculator
    settings = EngineSettings(name="gfn2", threads=1)
    if not get_engine("gfn2").available(settings)[0]:
        return None
    symbols, positions = _read_atoms(path)
    calc = make_calculator(settings)
    energy_and_gradient(calc, symbols, positions)
    rng = np.random.default_rng(0)
    times = []
    for _ in range(repeats):
        # 0.01 A random moves, as along a minimisation (the wavefunction restarts)
        moved = positions + rng.normal(scale=0.01, size=positions.shape)
        t0 = time.perf_counter()
        energy_and_gradient(calc, symbols, moved)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def speed_line(seconds=None):
    """One line for a benchmark's output (measured now unless given)."""
    if seconds is None:
        seconds = gfn2_gradient_seconds()
    if seconds is None:
        return "machine speed: not measured (GFN2 not installed)"
    return ("machine speed: GFN2 gradient of the 94-atom 1us0 helix %.3f s"
            " (1 thread, median of 5 warm calls)" % seconds)

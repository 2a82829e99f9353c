"""Wall time per energy+gradient call of each qr_phenix engine.

    .venv/bin/python benchmarks/engine_timings.py [--threads 1] [--repeats 5]

System: the 94-atom reference helix (tests/data/helix/a87_99_h.pdb) and,
for the fast engines, 2 and 4 copies of it side by side.  Each timed call
moves every atom by ~0.01 A (like a minimiser step), so in-process engines
restart from the previous wavefunction as they do in refinement.  The first
call (set-up, cold SCF) is reported separately; "warm" is the median of the
rest.  PySCF (hf, dft) is timed on acetamide only: on the helix it takes
minutes to hours per gradient on 2 cores.
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from qr_phenix.benchmark.machine import (  # noqa: E402
    ACETAMIDE_PDB, HELIX, read_atoms, time_gradient)

ACETAMIDE_SYMBOLS, ACETAMIDE = read_atoms(ACETAMIDE_PDB)

# (label, engine name, extra settings, copies to time)
CASES = [
    ("gfn2 (tblite)", "gfn2", {}, (1, 2, 4)),
    ("gfn2 + ALPB water", "gfn2", {"solvent": "water"}, (1,)),
    ("gfn1 (tblite)", "gfn1", {}, (1,)),
    ("xtb (binary, GFN2)", "xtb", {}, (1, 2, 4)),
    ("pm7", "pm7", {}, (1, 2, 4)),
    ("pm7 MOZYME", "pm7", {"mozyme": True}, (1, 2, 4)),
    ("pm6_d3h4", "pm6_d3h4", {}, (1,)),
    ("pm6", "pm6", {}, (1,)),
    ("test (analytic)", "test", {}, (1, 2, 4)),
]
SMALL_CASES = [
    ("hf-d3bj/6-31g (PySCF)", "hf", {"basis": "6-31g", "dispersion": "d3bj"}),
    ("b3lyp-d3bj/6-31g (PySCF, RI)", "dft", {"basis": "6-31g", "xc": "b3lyp",
                                             "dispersion": "d3bj"}),
]


def copies(symbols, positions, n):
    """n helices on a 2-wide grid, 20 A apart in x and y."""
    offsets = [(20.0 * (k % 2), 20.0 * (k // 2), 0.0) for k in range(n)]
    return symbols * n, np.vstack([positions + o for o in offsets])


def time_engine(name, extra, threads, symbols, positions, repeats):
    from qr_phenix.engines import EngineSettings
    return time_gradient(EngineSettings(name=name, threads=threads, **extra), symbols,
                         positions, repeats)


def blas_comparison(threads):
    """gfn2 with and without the OpenBLAS preload (separate processes: the
    preload only works before tblite's first import)."""
    code = (
        "import sys, time, numpy as np; sys.path.insert(0, %r); sys.path.insert(0, %r);"
        "from engine_timings import *; from qr_phenix.engines import tblite;"
        "s, p = read_atoms(HELIX); out = [];"
        "[out.append((n, time_engine('gfn2', {}, %d, *copies(s, p, n), 5)[1])) for n in (1, 4)];"
        "from qr_phenix.engines import EngineSettings, energy_and_gradient, make_calculator;"
        "e = energy_and_gradient(make_calculator(EngineSettings(threads=%d)), s, p).energy;"
        "print(tblite.BLAS_STATUS, '|', ' '.join('%%d atoms %%.3f s' %% (94 * n, t) for n, t in out),"
        " '| E = %%.8f kcal/mol' %% e); import os; os._exit(0)"
        % (str(ROOT), str(Path(__file__).parent), threads, threads))
    for blas in ("", "none"):
        env = dict(os.environ, QR_PHENIX_TBLITE_BLAS=blas)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True)
        print("  %-40s %s" % ("QR_PHENIX_TBLITE_BLAS=%r" % blas,
                              (out.stdout.strip() or out.stderr.strip()[-300:])))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-blas-comparison", action="store_true")
    args = parser.parse_args()
    if not HELIX.exists():
        sys.exit("reference helix not found: %s" % HELIX)
    symbols, positions = read_atoms(HELIX)
    print("qr_phenix engine timings: threads=%d, %d warm repeats (median), %d CPUs,"
          " load average at start %.1f" % (args.threads, args.repeats, os.cpu_count(),
                                           os.getloadavg()[0]))
    print("%-30s %6s %10s %10s" % ("engine", "atoms", "first s", "warm s"))
    for label, name, extra, sizes in CASES:
        for n in sizes:
            s, p = copies(symbols, positions, n)
            first, warm, reason = time_engine(name, extra, args.threads, s, p, args.repeats)
            if warm is None:
                print("%-30s  not available: %s" % (label, reason))
                break
            print("%-30s %6d %10.3f %10.3f" % (label, len(s), first, warm))
            sys.stdout.flush()
    for label, name, extra in SMALL_CASES:
        first, warm, reason = time_engine(name, extra, args.threads, ACETAMIDE_SYMBOLS,
                                          ACETAMIDE, min(args.repeats, 3))
        if warm is None:
            print("%-30s  not available: %s" % (label, reason))
            continue
        print("%-30s %6d %10.3f %10.3f" % (label, len(ACETAMIDE), first, warm))
    from qr_phenix.engines import tblite
    print("tblite BLAS in this process: %s" % tblite.BLAS_STATUS)
    if not args.no_blas_comparison:
        print("gfn2 with / without the system OpenBLAS preload (fresh processes):")
        blas_comparison(args.threads)
    sys.stdout.flush()
    os._exit(0)  # tblite's ffi finalisers print noise at interpreter exit


if __name__ == "__main__":
    main()

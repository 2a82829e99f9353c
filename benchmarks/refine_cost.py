"""Where the time of a quantum refinement goes: engine vs everything else.

    .venv/bin/python benchmarks/refine_cost.py [engine ...]   (default: gfn2)

Refines the 1us0 helix perturbed by MD (mean shift 0.6 A, seed 1) against
../shared/data/1us0/data.mtz with qr.refine and prints, per engine, wall
time, engine time, engine calls and the share of time spent outside the
engine (target: < 20 %).  Output recorded in benchmarks/refine_cost.txt.
"""

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import qr_phenix  # noqa: F401  (first: see qr_phenix/__init__.py)
from libtbx.utils import null_out

from qr_phenix.benchmark.perturb import Perturber
from qr_phenix.command_line import run_checked
from qr_phenix.programs.refine import Program

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "1us0"


def main(engines):
    out = Path(tempfile.mkdtemp(prefix="qr_cost_"))
    text, info = Perturber(str(SHARED / "a87_99_h.pdb")).run(0.6, 1)
    start = out / "start.pdb"
    start.write_text(text)
    print("1us0 helix, 94 atoms, MD start mean shift %.2f A; %d core(s) visible"
          % (info.mean_shift, os.cpu_count()))
    print("%-10s %8s %9s %7s %8s %8s %8s %10s" % (
        "engine", "wall(s)", "engine(s)", "calls", "s/call", "R-work", "R-free", "outside %"))
    for engine in engines:
        r = run_checked(Program, [str(start), str(SHARED / "data.mtz"),
                                  "qm_restraints.engine=%s" % engine,
                                  "refinement.bulk_solvent=False", "refinement.adp=none",
                                  "output.prefix=%s" % (out / engine)], logger=null_out())
        e = r["engine"]
        outside = 100 * (1 - e["seconds"] / r["wall_seconds"])
        print("%-10s %8.1f %9.1f %7d %8.3f %8.4f %8.4f %9.1f%%" % (
            engine, r["wall_seconds"], e["seconds"], e["calls"],
            e["seconds"] / max(1, e["calls"]), r["final"]["r_work"], r["final"]["r_free"],
            outside))


if __name__ == "__main__":
    main(sys.argv[1:] or ["gfn2"])

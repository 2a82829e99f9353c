"""QM real-space refinement of one protein chain against a cryo-EM-like map.

    .venv/bin/python benchmarks/cryoem_chain.py [--out DIR] [--entry 3kyi --chain B]
        [--resolution 3.5] [--sigma 0.2] [--nproc 2] [--qm-args KEY=VALUE ...]

The chain (all H, from qr.prepare of the entry in ../shared/data/entries) is
put in a P1 box with 6 A margins; a map is computed from it at the given
resolution (electron form factors, its own B); the start model is the chain
with every coordinate shifted by a Gaussian of `sigma` A (fixed seed).  It
is refined twice with qr.refine in real-space mode: library restraints, and
GFN2-xTB restraints (fragments, nproc processes, library stage first: the
defaults).  Prints map CC (mask), non-H bonds/angles, clashscore, engine
calls, wall time, and the log's first cost estimate against the wall time.
Output recorded in benchmarks/cryoem_chain.txt.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ENTRIES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "entries"
MARGIN = 6.0


def prepared_chain(entry, chain, out):
    prepared = out / ("%s_prepared.pdb" % entry)
    if not prepared.exists():
        subprocess.check_call([sys.executable, "-m", "qr_phenix.prepare",
                               str(ENTRIES / ("%s.pdb" % entry)),
                               "output.file_name=%s" % prepared],
                              stdout=subprocess.DEVNULL)
    return prepared


def make_inputs(prepared, chain, resolution, sigma, out):
    import numpy as np
    import qr_phenix  # noqa: F401  (first: see qr_phenix/__init__.py)
    import iotbx.mrcfile
    import iotbx.pdb
    from cctbx import crystal
    from scitbx.array_family import flex
    h = iotbx.pdb.input(str(prepared)).construct_hierarchy()
    h = h.select(h.atom_selection_cache().selection("chain %s" % chain))
    xyz = np.array(h.atoms().extract_xyz())
    xyz += MARGIN - xyz.min(axis=0)
    size = xyz.max(axis=0) + MARGIN
    h.atoms().set_xyz(flex.vec3_double(xyz))
    cs = crystal.symmetry(unit_cell=tuple(size) + (90, 90, 90), space_group_symbol="P1")
    reference = out / "chain_reference.pdb"
    reference.write_text(h.as_pdb_string(crystal_symmetry=cs))
    xrs = h.extract_xray_structure(crystal_symmetry=cs)
    xrs.scattering_type_registry(table="electron")
    fft = xrs.structure_factors(d_min=resolution).f_calc().fft_map(resolution_factor=0.25)
    fft.apply_sigma_scaling()
    map_path = out / "chain_map.mrc"
    iotbx.mrcfile.write_ccp4_map(
        file_name=str(map_path), unit_cell=cs.unit_cell(), space_group=cs.space_group(),
        map_data=fft.real_map_unpadded().as_double(), labels=flex.std_string(["chain map"]))
    rng = np.random.default_rng(0)
    h.atoms().set_xyz(flex.vec3_double(xyz + rng.normal(0.0, sigma, xyz.shape)))
    start = out / "chain_start.pdb"
    start.write_text(h.as_pdb_string(crystal_symmetry=cs))
    return start, map_path, h.atoms_size()


def refine(start, map_path, resolution, out, tag, extra):
    prefix = out / ("chain_%s" % tag)
    result = Path(str(prefix) + ".json")
    if not result.exists():
        env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
        cmd = [sys.executable, "-m", "qr_phenix.refine", str(start), str(map_path),
               "refinement.resolution=%g" % resolution, "output.prefix=%s" % prefix,
               "output.overwrite=True"] + extra
        with open(str(prefix) + ".out", "w") as log:
            if subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env):
                return None
    return json.loads(result.read_text())


def main(argv):
    from qr_phenix.benchmark.machine import speed_line
    from qr_phenix.refinement.progress import estimate_against_wall
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="cryoem_chain_out")
    ap.add_argument("--entry", default="3kyi")
    ap.add_argument("--chain", default="B")
    ap.add_argument("--resolution", type=float, default=3.5)
    ap.add_argument("--sigma", type=float, default=0.2)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--qm-args", nargs="*", default=[],
                    help="extra qr.refine arguments for the GFN2 run")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    prepared = prepared_chain(args.entry, args.chain, out)
    start, map_path, n_atoms = make_inputs(prepared, args.chain, args.resolution,
                                           args.sigma, out)
    print("%s chain %s: %d atoms (all H), map %.1f A, start: Gaussian shifts %.2f A"
          % (args.entry, args.chain, n_atoms, args.resolution, args.sigma))
    print(speed_line())
    print("| restraints | map CC start / final | bonds / angles (non-H) start -> final |"
          " clashscore start -> final | engine calls | s per gradient | wall (s) |"
          " first estimate |")
    print("|---|---|---|---|---|---|---|---|")
    for tag, extra in (("cctbx", ["qm_restraints.restraints=cctbx"]),
                       ("gfn2", ["qm_restraints.restraints=qm", "qm_restraints.engine=gfn2",
                                 "parallel.nproc=%d" % args.nproc] + args.qm_args)):
        r = refine(start, map_path, args.resolution, out, tag, extra)
        if r is None:
            print("| %s | failed (see chain_%s.out) |" % (tag, tag))
            continue
        s, f = r["start"], r["final"]
        calls = r["engine"]["calls"]
        print("| %s | %.4f / %.4f | %.3f / %.2f -> %.4f / %.2f | %.1f -> %.1f | %d | %s |"
              " %.0f | %s |" % (
                  tag, s["map_cc"], f["map_cc"], s["bond_rmsd"], s["angle_rmsd"],
                  f["bond_rmsd"], f["angle_rmsd"], s["clashscore"], f["clashscore"], calls,
                  "%.1f" % (r["engine"]["seconds"] / calls) if calls else "-",
                  r["wall_seconds"],
                  estimate_against_wall(r) if r["cost_estimates"] else "-"))
        sys.stdout.flush()


if __name__ == "__main__":
    t0 = time.time()
    main(sys.argv[1:])
    print("total %.0f s" % (time.time() - t0))

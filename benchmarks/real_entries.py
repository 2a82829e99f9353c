"""qr.prepare + qr.refine on the real P1 entries in ../shared/data/entries.

    .venv/bin/python benchmarks/real_entries.py [--out DIR] [--qm ENTRY ...]
        [--entries ID ...] [--nproc N] [--qm-args KEY=VALUE ...]

Each entry is prepared (all hydrogens; its ligand dictionary when the entry
has one) and refined with library restraints, defaults otherwise; entries
named with --qm are refined again with quantum restraints (GFN2-xTB,
fragments, parallel.nproc=N).  Resumable: an entry whose JSON exists is not
run again.  Prints one table row per run and compares with phenix.refine's
result on the same files (README of the entries folder):

  start/final R-work, R-free, gap, non-H bonds/angles, clashscore (start and
  final model files scored alike, X-H at the library's electron-cloud
  lengths as MolProbity does), mean B, engine calls, wall time; and the targets: final R-free within 0.01 of
  phenix.refine's, never above the start's.

The output recorded in benchmarks/real_entries.txt.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ENTRIES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "entries"

# phenix.refine on the same files (entries README): R-work, R-free, bonds, angles, clashscore
PHENIX = {
    "1va7": (0.2223, 0.2652, 0.004, 0.98, 1.79),
    "3kyi": (0.2694, 0.3222, 0.004, 0.83, 3.43),
    "2pro": (0.2583, 0.3158, 0.004, 0.98, 9.17),
    "4rnf": (0.2342, 0.2796, 0.004, 0.97, 8.78),
    "4drw": (0.3253, 0.3643, 0.004, 0.90, 16.03),
    "1il5": (0.1939, 0.2520, 0.005, 0.97, 6.12),
    "2x10": (0.2276, 0.2865, 0.004, 0.99, 7.82),
    "5d12": (0.2899, 0.3458, 0.007, 1.60, 15.20),
}


def run(cmd, log_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    t0 = time.time()
    with open(log_path, "w") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    return rc, time.time() - t0


def prepare(entry, out):
    prepared = out / ("%s_prepared.pdb" % entry)
    if prepared.exists():
        return prepared, 0.0
    dictionary = ENTRIES / ("%s.cif" % entry)
    cmd = [sys.executable, "-m", "qr_phenix.prepare", str(ENTRIES / ("%s.pdb" % entry))]
    cmd += [str(dictionary)] if dictionary.exists() else []
    cmd += ["output.file_name=%s" % prepared]
    rc, seconds = run(cmd, out / ("%s_prepare.log" % entry))
    if rc != 0:
        raise RuntimeError("qr.prepare failed for %s (see %s_prepare.log)" % (entry, entry))
    return prepared, seconds


def refine(entry, prepared, out, tag, extra):
    prefix = out / ("%s_%s" % (entry, tag))
    result = Path(str(prefix) + ".json")
    if not result.exists():
        dictionary = ENTRIES / ("%s.cif" % entry)
        cmd = [sys.executable, "-m", "qr_phenix.refine", str(prepared),
               str(ENTRIES / ("%s.mtz" % entry))]
        cmd += [str(dictionary)] if dictionary.exists() else []
        cmd += ["output.prefix=%s" % prefix, "output.overwrite=True"] + extra
        rc, _ = run(cmd, Path(str(prefix) + ".out"))
        if rc != 0:
            return None
    with open(result) as f:
        return json.load(f)


def clashscore(pdb, entry):
    """Clashscore of a model file with the current qr_phenix.validation (so
    start and final, library and QM are scored alike)."""
    import qr_phenix  # noqa: F401  (first: see qr_phenix/__init__.py)
    import iotbx.cif
    from qr_phenix import validation
    from qr_phenix.monomer_library import process_model
    dictionary = ENTRIES / ("%s.cif" % entry)
    objects = [(str(dictionary), iotbx.cif.reader(file_path=str(dictionary)).model())] \
        if dictionary.exists() else None
    model = process_model(str(pdb), stop_for_unknowns=False, restraint_objects=objects)
    return validation.clashscore(model).clashscore


def fmt(x, spec):
    return spec % x if x is not None else "-"


def row(entry, tag, r, prepared):
    if r is None:
        return "| %s | %s | failed (see %s_%s.out) |" % (entry, tag, entry, tag)
    s, f = r["start"], r["final"]
    clash_start, clash_final = clashscore(prepared, entry), clashscore(
        r["outputs"]["pdb"], entry)
    ph = PHENIX.get(entry)
    within = ph is not None and f["r_free"] <= ph[1] + 0.01
    never_worse = f["r_free"] <= s["r_free"] + 0.002
    return ("| %s | %s | %s / %s | %s / %s | %s | %s / %s | %s -> %s | %s | %s | %.0f | %s | %s |"
            % (entry, tag, fmt(s["r_work"], "%.4f"), fmt(f["r_work"], "%.4f"),
               fmt(s["r_free"], "%.4f"), fmt(f["r_free"], "%.4f"), fmt(f["gap"], "%.3f"),
               fmt(f["bond_rmsd"], "%.4f"), fmt(f["angle_rmsd"], "%.2f"),
               fmt(clash_start, "%.1f"), fmt(clash_final, "%.1f"),
               fmt(f.get("mean_b"), "%.0f"), r["engine"]["calls"], r["wall_seconds"],
               "%.4f (%s)" % (ph[1], "ok" if within else "MISSED") if ph else "-",
               "ok" if never_worse else "WORSE"))


def cost_line(entry, tag, r):
    """The log's first cost estimate against the real wall time."""
    from qr_phenix.refinement.progress import estimate_against_wall
    per = r["engine"]["seconds"] / max(1, r["engine"]["calls"])
    return ("  %s %s: %.1f s per QM gradient; wall %.0f s; %s, printed after %.0f s%s" % (
        entry, tag, per, r["wall_seconds"], estimate_against_wall(r),
        r["cost_estimates"][0]["elapsed_s"],
        "; library stage %d cycles" % r["library_stage"]["cycles"]
        if r.get("library_stage") else ""))


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="real_entries_out")
    ap.add_argument("--entries", nargs="*", default=list(PHENIX))
    ap.add_argument("--qm", nargs="*", default=[])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--qm-args", nargs="*", default=[])
    ap.add_argument("--qm-only", action="store_true",
                    help="skip the library runs (entries named with --qm only)")
    args = ap.parse_args(argv)
    if not ENTRIES.is_dir():
        sys.exit("no entries folder %s (../shared beside the checkout)" % ENTRIES)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.qm:
        from qr_phenix.benchmark.machine import speed_line
        print(speed_line())
    print("| entry | restraints | R-work start / final | R-free start / final | gap |"
          " bonds / angles (non-H) | clashscore start -> final | <B> | engine calls |"
          " wall (s) | phenix.refine R-free (target +0.01) | never worse |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    sys.stdout.flush()
    for entry in args.entries:
        prepared, _ = prepare(entry, out)
        runs = [] if args.qm_only else [("cctbx", ["qm_restraints.restraints=cctbx"])]
        if entry in args.qm:
            runs.append(("gfn2", ["qm_restraints.restraints=qm", "qm_restraints.engine=gfn2",
                                  "parallel.nproc=%d" % args.nproc] + args.qm_args))
        for tag, extra in runs:
            result = refine(entry, prepared, out, tag, extra)
            print(row(entry, tag, result, prepared))
            if result and result.get("cost_estimates"):
                print(cost_line(entry, tag, result))
            sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:])

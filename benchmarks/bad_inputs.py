"""qr.prepare and qr.refine on real entries and on crafted bad inputs: each
run either works or ends in exactly one `Sorry:` line, never a traceback.

    .venv/bin/python benchmarks/bad_inputs.py [--out DIR] [--cases crafted|entries|all]
        [--entries ID ...] [--jobs N]

Entries (../shared/data/entries): qr.prepare, then a short qr.refine with
library restraints (refinement.macro_cycles=1) on the prepared model; an
entry with a dictionary (<id>.cif) runs twice, with it and without it (then
the CCD-generated dictionary must serve); an entry with altlocs once more
with prepare.altlocs=keep.

Crafted inputs, made here from tests/data/1us0_A26_35.pdb (10 residues) and
tests/data/mse_peptide.pdb, with F-calc data: no CRYST1, two MODELs, mmCIF
with a long chain id, altlocs, ANISOU, zero occupancy, waters without H for
QM, an interrupted run then output.resume=True, and a few more.

Prints one line per run: case, program, expected, result (ok / the Sorry
line / TRACEBACK and its last line / FAILED without a Sorry line); exits 1
when any run ended in a traceback, failed without exactly one Sorry line, or
did not end as expected.  The output recorded in benchmarks/bad_inputs.txt.
"""

import argparse
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENTRIES = REPO.parent / "shared" / "data" / "entries"
PEPTIDE = REPO / "tests" / "data" / "1us0_A26_35.pdb"
MSE_PEPTIDE = REPO / "tests" / "data" / "mse_peptide.pdb"
CELL = "CRYST1   40.000   40.000   40.000  90.00  90.00  90.00 P 1"


def environment():
    # unbuffered: the Sorry line (stderr) stays after everything printed before it
    return dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE",
                PYTHONUNBUFFERED="1",
                PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def classify(rc, text):
    """ok / the Sorry line (the last line of the output) / TRACEBACK: last line /
    FAILED: a Sorry message of several lines, or no Sorry line."""
    lines = [l for l in text.splitlines() if l.strip()]
    if "Traceback (most recent call last)" in text:
        return "TRACEBACK", "TRACEBACK: %s" % (lines[-1] if lines else "")
    if rc == 0:
        return "ok", "ok"
    sorry = [k for k, l in enumerate(lines) if l.startswith("Sorry:")]
    if len(sorry) == 1 and sorry[0] == len(lines) - 1:
        return "Sorry", lines[-1][:300]
    if len(sorry) == 1:
        return "FAILED", "FAILED: a Sorry of %d lines: %s" % (len(lines) - sorry[0],
                                                             lines[sorry[0]][:200])
    return "FAILED", "FAILED rc=%s, %d Sorry lines: %s" % (rc, len(sorry),
                                                          lines[-1] if lines else "")


class Run:
    """One program run in `work`; result filled in by `go`."""

    def __init__(self, case, program, args, expect, work, interrupt_after=None,
                 timeout=3600):
        self.case, self.program, self.args, self.expect = case, program, args, expect
        self.work = work
        self.interrupt_after = interrupt_after    # a file: SIGINT once it exists
        self.timeout = timeout
        self.kind = self.line = None
        self.seconds = 0.0

    def go(self):
        cmd = [sys.executable, "-m", "qr_phenix.%s" % self.program] + [str(a) for a in self.args]
        log = self.work / ("%s_%s%s.out" % (self.case, self.program, "_interrupted"
                                            if self.interrupt_after else ""))
        t0 = time.time()
        with open(log, "w") as out:
            p = subprocess.Popen(cmd, cwd=self.work, stdout=out, stderr=subprocess.STDOUT,
                                 env=environment())
            try:
                if self.interrupt_after is not None:
                    while p.poll() is None and not self.interrupt_after.exists():
                        time.sleep(0.1)
                        if time.time() - t0 > self.timeout:
                            raise subprocess.TimeoutExpired(cmd, self.timeout)
                    if p.poll() is None:
                        p.send_signal(signal.SIGINT)
                rc = p.wait(timeout=max(1, self.timeout - (time.time() - t0)))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                rc = "timeout"
        self.seconds = time.time() - t0
        text = log.read_text(errors="replace")
        if rc == "timeout":
            self.kind, self.line = "FAILED", "FAILED: timeout after %d s" % self.timeout
        elif self.interrupt_after is not None and rc == 130 and "Traceback" not in text:
            self.kind, self.line = "interrupted", "interrupted (Ctrl-C after %s appeared)" \
                % self.interrupt_after.name
        else:
            self.kind, self.line = classify(rc, text)
        return self

    @property
    def bad(self):
        return self.kind in ("TRACEBACK", "FAILED") or self.kind != self.expect

    def row(self):
        mark = "" if not self.bad else "   <-- %s" % (
            "expected %s" % self.expect if self.kind not in ("TRACEBACK", "FAILED")
            else "BAD")
        return "%-28s %-15s %-11s %5.0f s  %s%s" % (
            self.case, self.program, self.expect, self.seconds, self.line, mark)


# -- crafted inputs ---------------------------------------------------------------

def atom_lines(path):
    return [l for l in Path(path).read_text().splitlines()
            if l.startswith(("ATOM", "HETATM"))]


def write(path, lines):
    path.write_text("\n".join(lines + ["END"]) + "\n")
    return path


def make_mtz(model_path, path):
    """|F-calc| of the model to 2.5 A with 10 % free-R flags (P1, the model's cell)."""
    import iotbx.pdb
    xrs = iotbx.pdb.input(str(model_path)).xray_structure_simple()
    f = abs(xrs.structure_factors(d_min=2.5).f_calc())
    flags = f.generate_r_free_flags(fraction=0.1)
    mtz = f.as_mtz_dataset(column_root_label="FOBS")
    mtz.add_miller_array(flags, column_root_label="R-free-flags")
    mtz.mtz_object().write(str(path))
    return path


def set_occ(line, occ):
    return line[:54] + "%6.2f" % occ + line[60:]


def crafted_inputs(d):
    """Write the crafted files into d; returns {name: path}."""
    import iotbx.pdb
    f = {}
    atoms = atom_lines(PEPTIDE)
    f["model"] = write(d / "peptide.pdb", [CELL] + atoms)
    f["mtz"] = make_mtz(f["model"], d / "peptide.mtz")
    f["no_cryst1"] = write(d / "no_cryst1.pdb", atoms)
    f["two_models"] = write(d / "two_models.pdb", [CELL, "MODEL        1"] + atoms + [
        "ENDMDL", "MODEL        2"] + atoms + ["ENDMDL"])
    # chain id of 5 characters: mmCIF only
    inp = iotbx.pdb.input(str(f["model"]))
    h = inp.construct_hierarchy()
    for chain in h.chains():
        chain.id = "LONGA"
    f["long_chain"] = d / "long_chain.cif"
    f["long_chain"].write_text(h.as_mmcif_string(crystal_symmetry=inp.crystal_symmetry()))
    # THR 28 OG1/CG2 in two conformers (B shifted 0.5 A), occupancies 0.6/0.4
    lines = [CELL]
    for l in atoms:
        if l[17:20] == "THR" and l[22:26].strip() == "28" and l[12:16].strip() in ("OG1", "CG2"):
            lines.append(set_occ(l[:16] + "A" + l[17:], 0.6))
            x = float(l[30:38]) + 0.5
            lines.append(set_occ(l[:16] + "B" + l[17:30] + "%8.3f" % x + l[38:], 0.4))
        else:
            lines.append(l)
    f["altlocs"] = write(d / "altlocs.pdb", lines)
    # ANISOU for every atom (isotropic-equivalent U from B)
    lines = [CELL]
    for l in atoms:
        lines.append(l)
        u = int(round(float(l[60:66]) / (8 * 3.14159265 ** 2) * 1e4))
        lines.append("ANISOU" + l[6:27] + " %7d%7d%7d%7d%7d%7d" % (u, u, u, 0, 0, 0) + l[70:])
    f["anisou"] = write(d / "anisou.pdb", lines)
    # GLU 29 at occupancy 0; a model with every atom at occupancy 0
    f["zero_occ_residue"] = write(d / "zero_occ_residue.pdb", [CELL] + [
        set_occ(l, 0.0) if l[22:26].strip() == "29" else l for l in atoms])
    f["zero_occ_all"] = write(d / "zero_occ_all.pdb", [CELL] + [set_occ(l, 0.0)
                                                                 for l in atoms])
    # an empty model, and a model file that is not one
    f["empty"] = write(d / "empty.pdb", [CELL])
    f["not_a_model"] = d / "not_a_model.pdb"
    f["not_a_model"].write_text("this is not a PDB file\n" * 5)
    # the MSE peptide (a residue outside PDBFixer's templates: CCD + hydride)
    # with a long chain id
    inp = iotbx.pdb.input(str(MSE_PEPTIDE))
    h = inp.construct_hierarchy()
    for chain in h.chains():
        chain.id = "CHAIN1"
    f["mse_long_chain"] = d / "mse_long_chain.cif"
    f["mse_long_chain"].write_text(h.as_mmcif_string(crystal_symmetry=inp.crystal_symmetry()))
    # an unknown ligand (QRX, ethanol-like, in no dictionary)
    f["unknown_ligand"] = write(d / "unknown_ligand.pdb", [CELL] + atoms + [
        "HETATM 9001  C1  QRX L   1      20.000  20.000  20.000  1.00 20.00           C",
        "HETATM 9002  C2  QRX L   1      21.523  20.000  20.000  1.00 20.00           C",
        "HETATM 9003  O1  QRX L   1      22.000  21.348  20.000  1.00 20.00           O"])
    # data without free-R flags
    import iotbx.mtz
    arrays = iotbx.mtz.object(str(f["mtz"])).as_miller_arrays()
    fobs = [a for a in arrays if a.info().labels[0] == "FOBS"][0]
    f["no_flags_mtz"] = d / "no_flags.mtz"
    fobs.as_mtz_dataset(column_root_label="FOBS").mtz_object().write(str(f["no_flags_mtz"]))
    # a cell that differs from the data
    f["other_cell"] = write(d / "other_cell.pdb", [CELL.replace("40.000", "43.000")] + atoms)
    return f


def crafted_groups(d):
    """[[Run, ...], ...]: the runs of a group depend on each other (in order)."""
    (d / "inputs").mkdir(parents=True, exist_ok=True)
    f = crafted_inputs(d / "inputs")
    cctbx = ["qm_restraints.restraints=cctbx", "refinement.macro_cycles=1"]
    refine = lambda case, args, expect="ok", **kw: Run(case, "refine", args + [
        "output.prefix=%s" % (d / case), "output.overwrite=True"], expect, d, **kw)
    prepare = lambda case, args, expect="ok": Run(case, "prepare", args + [
        "output.file_name=%s_prepared.pdb" % case, "output.overwrite=True"], expect, d)
    groups = []
    # a model with all hydrogens (for QM runs)
    groups.append([
        prepare("peptide_h", [f["model"]]),
        refine("peptide_h_qm", ["peptide_h_prepared.pdb", "refinement.macro_cycles=1",
                                "refinement.max_iterations=5"]),
        # waters without H next to it: QM must refuse, naming them
        WaterRun(d, refine("waters_no_h_qm", ["waters_no_h.pdb", "refinement.macro_cycles=1"],
                           "Sorry")),
        refine("waters_no_h_cctbx", ["waters_no_h.pdb", f["mtz"]] + cctbx),
    ])
    groups.append([
        prepare("no_cryst1", [f["no_cryst1"]]),
        refine("no_cryst1", [f["no_cryst1"], f["mtz"]] + cctbx, "Sorry"),
        refine("no_cryst1_geometry", [f["no_cryst1"]] + cctbx),
        refine("other_cell", [f["other_cell"], f["mtz"]] + cctbx, "Sorry"),
    ])
    groups.append([
        prepare("two_models", [f["two_models"]], "Sorry"),
        prepare("two_models_first", [f["two_models"], "input.first_model_only=True"]),
        refine("two_models", [f["two_models"], f["mtz"]] + cctbx, "Sorry"),
        refine("two_models_first", [f["two_models"], f["mtz"], "input.first_model_only=True"]
               + cctbx),
    ])
    groups.append([
        prepare("long_chain", [f["long_chain"]]),
        refine("long_chain", ["long_chain_prepared.cif", f["mtz"]] + cctbx),
        prepare("mse_long_chain", [f["mse_long_chain"]]),
        refine("mse_long_chain", ["mse_long_chain_prepared.cif"] + cctbx),
        # interrupted after the first cycle's checkpoint, then resumed (mmCIF only)
        refine("long_chain_resume", ["long_chain_prepared.cif", f["mtz"],
                                     "qm_restraints.restraints=cctbx",
                                     "refinement.macro_cycles=4", "refinement.r_tolerance=0",
                                     "refinement.shift_tolerance=0"], "interrupted",
               interrupt_after=d / "long_chain_resume.checkpoint.json"),
        refine("long_chain_resume", ["long_chain_prepared.cif", f["mtz"],
                                     "qm_restraints.restraints=cctbx",
                                     "refinement.macro_cycles=4", "refinement.r_tolerance=0",
                                     "refinement.shift_tolerance=0", "output.resume=True"]),
    ])
    groups.append([
        prepare("altlocs", [f["altlocs"]]),
        prepare("altlocs_keep", [f["altlocs"], "altlocs=keep"]),
        refine("altlocs_keep_cctbx", ["altlocs_keep_prepared.pdb", f["mtz"]] + cctbx),
        refine("altlocs_keep_qm", ["altlocs_keep_prepared.pdb", f["mtz"]], "Sorry"),
        refine("altlocs_raw_cctbx", [f["altlocs"], f["mtz"]] + cctbx),
        Run("altlocs", "fragments_check", [f["altlocs"]], "Sorry", d),
    ])
    groups.append([
        prepare("anisou", [f["anisou"]]),
        refine("anisou", [f["anisou"], f["mtz"]] + cctbx),
        prepare("zero_occ_residue", [f["zero_occ_residue"]]),
        refine("zero_occ_residue", ["zero_occ_residue_prepared.pdb", f["mtz"]] + cctbx),
        prepare("zero_occ_all", [f["zero_occ_all"]]),
        refine("zero_occ_all", [f["zero_occ_all"], f["mtz"]] + cctbx, "Sorry"),
    ])
    groups.append([
        prepare("empty", [f["empty"]], "Sorry"),
        refine("empty", [f["empty"], f["mtz"]] + cctbx, "Sorry"),
        prepare("not_a_model", [f["not_a_model"]], "Sorry"),
        prepare("unknown_ligand", [f["unknown_ligand"]], "Sorry"),
        refine("unknown_ligand", [f["unknown_ligand"], f["mtz"]] + cctbx, "Sorry"),
        refine("no_free_flags", [f["model"], f["no_flags_mtz"]] + cctbx, "Sorry"),
        refine("resume_without_checkpoint", [f["model"], f["mtz"], "output.resume=True"]
               + cctbx, "Sorry"),
        # an interrupted run resumed (PDB)
        refine("resume", [f["model"], f["mtz"], "qm_restraints.restraints=cctbx",
                          "refinement.macro_cycles=4", "refinement.r_tolerance=0",
                          "refinement.shift_tolerance=0"], "interrupted",
               interrupt_after=d / "resume.checkpoint.json"),
        refine("resume", [f["model"], f["mtz"], "qm_restraints.restraints=cctbx",
                          "refinement.macro_cycles=4", "refinement.r_tolerance=0",
                          "refinement.shift_tolerance=0", "output.resume=True"]),
    ])
    return groups


class WaterRun:
    """Before its run: peptide_h.pdb plus three waters (O only) 3 A from it."""

    def __init__(self, d, run):
        self.d, self.run = d, run

    def go(self):
        import numpy as np
        lines = [l for l in (self.d / "peptide_h_prepared.pdb").read_text().splitlines()
                 if not l.startswith(("END", "TER"))]
        xyz = np.array([[float(l[30:38]), float(l[38:46]), float(l[46:54])]
                        for l in lines if l.startswith(("ATOM", "HETATM"))])
        centre = xyz.mean(axis=0)
        far = xyz[np.argsort(-np.linalg.norm(xyz - centre, axis=1))[:3]]
        for k, x in enumerate(far):
            x = x + 3.0 * (x - centre) / np.linalg.norm(x - centre)
            lines.append("HETATM%5d  O   HOH W%4d    %8.3f%8.3f%8.3f  1.00 30.00           O"
                         % (9000 + k, k + 1, x[0], x[1], x[2]))
        write(self.d / "waters_no_h.pdb", lines)
        return self.run.go()

    def __getattr__(self, name):
        return getattr(self.run, name)


# -- entries ----------------------------------------------------------------------

def entry_groups(d, ids):
    d.mkdir(parents=True, exist_ok=True)
    groups = []
    for entry in ids:
        pdb, mtz, cif = (ENTRIES / ("%s.%s" % (entry, ext)) for ext in ("pdb", "mtz", "cif"))
        variants = [("", [], [])]
        if cif.exists():
            variants = [("_dict", [cif], []), ("_ccd", [], [])]
        if any(l[16] != " " for l in atom_lines(pdb)):
            # every conformer kept for the library refinement
            variants.append(("_altlocs_keep", variants[0][1], ["altlocs=keep"]))
        for tag, dictionary, options in variants:
            case = entry + tag
            groups.append([
                Run(case, "prepare", [pdb] + dictionary + options + [
                    "output.file_name=%s_prepared.pdb" % case, "output.overwrite=True"],
                    "ok", d),
                Run(case, "refine", ["%s_prepared.pdb" % case, mtz] + dictionary + [
                    "qm_restraints.restraints=cctbx", "refinement.macro_cycles=1",
                    "output.prefix=%s_refined" % case, "output.overwrite=True"], "ok", d),
            ])
    return groups


def run_group(group):
    done = []
    for run in group:
        done.append(run.go())
        if run.kind in ("TRACEBACK", "FAILED") and run.program == "prepare" \
                and run.expect == "ok":
            break               # the next runs need its output
    return done


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/tmp/qr_bad_inputs")
    p.add_argument("--cases", choices=("crafted", "entries", "all"), default="all")
    p.add_argument("--entries", nargs="*", default=None)
    p.add_argument("--jobs", type=int, default=1)
    a = p.parse_args(argv)
    out = Path(a.out).resolve()
    groups = []
    if a.cases in ("crafted", "all"):
        groups += crafted_groups(out / "crafted")
    if a.cases in ("entries", "all"):
        # smallest first
        ids = a.entries or sorted((p.stem for p in ENTRIES.glob("*.pdb")),
                                  key=lambda e: len(atom_lines(ENTRIES / (e + ".pdb"))))
        groups += entry_groups(out / "entries", ids)
    t0 = time.time()
    print("%-28s %-15s %-11s %7s  %s" % ("case", "program", "expected", "wall", "result"),
          flush=True)
    results = []
    # rows as groups finish: a run cut short keeps what it did
    with ThreadPoolExecutor(max_workers=max(1, a.jobs)) as pool:
        for future in as_completed([pool.submit(run_group, g) for g in groups]):
            for r in future.result():
                results.append(r)
                print(r.row(), flush=True)
    counts = {}
    for r in results:
        counts[r.kind] = counts.get(r.kind, 0) + 1
    bad = [r for r in results if r.bad]
    print("\n%d runs in %.0f s: %s; %d not as expected or without one Sorry line" % (
        len(results), time.time() - t0, ", ".join(
            "%d %s" % (n, k) for k, n in sorted(counts.items())), len(bad)))
    print("outputs and logs: %s" % out)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

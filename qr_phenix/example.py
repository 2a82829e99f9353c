"""A complete quantum refinement that needs no input files.

    python -m qr_phenix.example [out_dir] [engine=gfn2] [dose=0.6] [seed=1]

1. builds an ideal 13-residue poly-Gly alpha-helix with all hydrogens (neutral
   NH2/COOH termini), boxed in P1, B = 80 (the 1us0 study's reference,
   docs/benchmark_1us0.md);
2. simulates its data: 6-4 A, 10 % free, 5 % random error;
3. perturbs it by library-restraints MD at 1000 K to a mean shift of `dose`,
   which breaks the helix H-bonds;
4. refines the perturbed model with qr.refine twice, library (cctbx) and
   quantum (GFN2-xTB) restraints, and prints what each recovered.
"""

import os
import sys
import time

import numpy as np

# alpha-helix internal coordinates (Engh & Huber 1991 lengths/angles)
PHI, PSI, OMEGA = -57.8, -47.0, 180.0
N_CA, CA_C, C_N, C_O = 1.458, 1.525, 1.329, 1.231
ANGLE_N_CA_C, ANGLE_CA_C_N, ANGLE_C_N_CA, ANGLE_CA_C_O = 111.2, 116.2, 121.7, 120.5


def ideal_helix_backbone_pdb(first=87, last=99, chain="A"):
    """PDB text of an ideal alpha-helix backbone (N, CA, C, O) of Gly,
    residues first..last+1 (the extra residue orients the last carbonyl)."""
    from qr_phenix.benchmark.reference import place
    n = [np.array([0.0, 0.0, 0.0])]
    ca = [np.array([N_CA, 0.0, 0.0])]
    theta = np.radians(180 - ANGLE_N_CA_C)
    c = [ca[0] + CA_C * np.array([np.cos(theta), np.sin(theta), 0.0])]
    o = []
    for i in range(last - first + 1):
        n.append(place(n[i], ca[i], c[i], C_N, ANGLE_CA_C_N, PSI))
        o.append(place(n[i], ca[i], c[i], C_O, ANGLE_CA_C_O, PSI + 180.0))
        ca.append(place(ca[i], c[i], n[i + 1], N_CA, ANGLE_C_N_CA, OMEGA))
        c.append(place(c[i], n[i + 1], ca[i + 1], CA_C, ANGLE_N_CA_C, PHI))
    o.append(place(n[-1], ca[-1], c[-1], C_O, ANGLE_CA_C_O, PSI + 180.0))
    lines, serial = [], 1
    for i in range(len(n)):
        for name, xyz in (("N", n[i]), ("CA", ca[i]), ("C", c[i]), ("O", o[i])):
            lines.append("ATOM  %5d  %-3s GLY %s%4d    %8.3f%8.3f%8.3f  1.00 20.00"
                         "           %s" % (serial, name, chain, first + i, xyz[0], xyz[1],
                                            xyz[2], name[0]))
            serial += 1
    return "\n".join(lines + ["END"]) + "\n"


def parse_args(argv):
    options = {"engine": "gfn2", "dose": "0.6", "seed": "1"}
    out_dir = "qr_phenix_example"
    for a in argv:
        if "=" in a:
            key, value = a.split("=", 1)
            if key not in options:
                from libtbx.utils import Sorry
                raise Sorry("Unknown option %s (known: %s)" % (key, ", ".join(options)))
            options[key] = value
        else:
            out_dir = a
    return out_dir, options


def run(argv=None, log=sys.stdout):
    import iotbx.pdb
    from libtbx.utils import null_out
    from qr_phenix.benchmark import data, reference
    from qr_phenix.benchmark.metrics import Scorer
    from qr_phenix.benchmark.perturb import Perturber
    from qr_phenix.command_line import run_checked
    from qr_phenix.programs.refine import Program

    out_dir, opt = parse_args(sys.argv[1:] if argv is None else argv)
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.perf_counter()
    backbone = iotbx.pdb.input(source_info=None,
                               lines=ideal_helix_backbone_pdb().splitlines())
    ref_path = os.path.join(out_dir, "helix_reference.pdb")
    with open(ref_path, "w") as f:
        f.write(reference.build(backbone))
    mtz_path = os.path.join(out_dir, "helix_data.mtz")
    data.simulate(ref_path, mtz_path, seed=int(opt["seed"]))
    text, info = Perturber(ref_path).run(float(opt["dose"]), int(opt["seed"]))
    start_path = os.path.join(out_dir, "helix_start.pdb")
    with open(start_path, "w") as f:
        f.write(text)
    print("Ideal poly-Gly helix (94 atoms, all H) built, data simulated (6-4 A, 5 %% error),"
          " start perturbed by MD to a mean shift of %.2f A (seed %s)."
          % (info.mean_shift, opt["seed"]), file=log)
    results = {}
    for label, restraints in (("library (cctbx)", ["qm_restraints.restraints=cctbx"]),
                              ("quantum (%s)" % opt["engine"],
                               ["qm_restraints.restraints=qm",
                                "qm_restraints.engine=%s" % opt["engine"]])):
        prefix = os.path.join(out_dir, "refined_" + restraints[-1].split("=")[1])
        print("Refining with %s restraints ..." % label, file=log)
        results[label] = run_checked(Program, [start_path, mtz_path] + restraints + [
            "refinement.bulk_solvent=False", "refinement.adp=none", "output.prefix=" + prefix,
            "output.overwrite=True"], logger=null_out())
    score = Scorer(ref_path)
    s0 = score(start_path)
    first = next(iter(results.values()))["start"]
    print("\n%-22s %7s %7s %7s %7s %7s %9s %8s" % (
        "model", "R-work", "R-free", "bonds", "angles", "H-bonds", "rmsd(ref)", "time"),
        file=log)
    print("%-22s %7.4f %7.4f %7.4f %7.2f %5d/%d %9.3f %8s" % (
        "perturbed start", first["r_work"], first["r_free"], first["bond_rmsd"],
        first["angle_rmsd"], s0["hbonds"], s0["hbonds_total"], s0["rmsd_all"], "-"),
        file=log)
    for label, r in results.items():
        s = score(r["outputs"]["pdb"])
        f = r["final"]
        print("%-22s %7.4f %7.4f %7.4f %7.2f %5d/%d %9.3f %7.1fs" % (
            label, f["r_work"], f["r_free"], f["bond_rmsd"], f["angle_rmsd"], s["hbonds"],
            s["hbonds_total"], s["rmsd_all"], r["wall_seconds"]), file=log)
    print("\nbonds/angles: rmsd of non-H atoms from library ideals; H-bonds: helical"
          " O(i)..H(i+4) pairs of the reference within 1.7-2.2 A; rmsd(ref): all atoms.",
          file=log)
    print("Outputs in %s (refined_*.pdb/.cif/.log/.json). Total %.0f s."
          % (os.path.abspath(out_dir), time.perf_counter() - t0), file=log)
    return results


def main():
    from libtbx.utils import Sorry
    try:
        run()
    except Sorry as e:
        print("Sorry: %s" % e, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

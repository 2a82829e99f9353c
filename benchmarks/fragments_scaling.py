"""Cost of fragment-based GFN2 gradients on prepared 1us0 and 2x / 4x systems.

    OMP_NUM_THREADS=1 python benchmarks/fragments_scaling.py [prepared.pdb]
        [--sample 8] [--full CORE:BUFFER] [--settings 60:4,100:3,...]

1. Setup (partition: cores, buffers, caps, charges) for 1us0 (6794 atoms,
   with and without P21 symmetry images) and for 2 and 4 translated copies
   (no symmetry), for every setting.
2. Gradient cost on 1x: a full gradient takes minutes, so every setting is
   timed on `--sample` fragments evenly spaced through the fragment list
   (cores come out of a spatial bisection, so this samples the model
   uniformly), serially (nproc=1); the full-gradient time is extrapolated as
   mean sampled time x number of fragments and printed as such ("est.").
   The best setting's sample is rerun on a 2-process pool (nproc=2).
   `--full CORE:BUFFER` also times one complete gradient (nproc=2).

Default input /tmp/1us0_prepared.pdb, made by
    python -m qr_phenix.prepare 1us0.pdb output.file_name=/tmp/1us0_prepared.pdb
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import qr_phenix  # noqa: E402,F401  (first: BLAS preload, see qr_phenix/__init__.py)

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402

import numpy as np  # noqa: E402

import iotbx.pdb  # noqa: E402

from qr_phenix.engines.base import EngineSettings  # noqa: E402
from qr_phenix.fragmentation.evaluator import FragmentEvaluator  # noqa: E402
from qr_phenix.fragmentation import parallel  # noqa: E402
from qr_phenix.fragmentation.parallel import (  # noqa: E402
    ProcessPoolExecutor, SerialExecutor)

CHAIN_IDS = "BCDEFGHIJKLMNOPQRSTUVWXYZ"


def translated_copies(hierarchy, n_copies):
    """n_copies of the model side by side along x (20 A apart), new chain ids."""
    import iotbx.pdb.hierarchy
    sites = np.array(hierarchy.atoms().extract_xyz())
    shift = sites[:, 0].max() - sites[:, 0].min() + 20.0
    root = iotbx.pdb.hierarchy.root()
    model = iotbx.pdb.hierarchy.model()
    root.append_model(model)
    k_chain = 0
    for k in range(n_copies):
        for chain in hierarchy.only_model().chains():
            c = chain.detached_copy()
            c.id = chain.id if k == 0 else CHAIN_IDS[k_chain % len(CHAIN_IDS)]
            if k:
                k_chain += 1
            xyz = c.atoms().extract_xyz()
            c.atoms().set_xyz(xyz + (shift * k, 0, 0))
            model.append_chain(c)
    root.atoms().reset_i_seq()
    return root


def setup_time(hierarchy, cs, core, buffer, include_symmetry):
    ev = FragmentEvaluator(hierarchy, EngineSettings(name="gfn2"), crystal_symmetry=cs,
                           core_size=core, buffer_radius=buffer,
                           include_symmetry=include_symmetry)
    t0 = time.perf_counter()
    ev.update_partition(np.array(hierarchy.atoms().extract_xyz()))
    return ev, time.perf_counter() - t0


def sample_jobs(ev, sites, n_sample):
    """An evenly spaced sample of the fragment jobs (cores come from a spatial
    bisection, so the sample covers the model)."""
    _, jobs = ev.jobs(sites)
    idx = np.unique(np.linspace(0, len(jobs) - 1, min(n_sample, len(jobs))).astype(int))
    return [jobs[i] for i in idx]


def serial_costs(jobs):
    """(atoms, CPU s, wall s) per job, run one at a time in this process.

    CPU time (this process, 1 engine thread) is the number to extrapolate on a
    shared machine: the wall time grows with the load of other users."""
    ex = SerialExecutor()
    out = []
    for job in jobs:
        c0, w0 = time.process_time(), time.perf_counter()
        ex.run([job])
        out.append((len(job.symbols), time.process_time() - c0, time.perf_counter() - w0))
    return np.array(out)


def parse_pairs(text):
    return [(int(a), float(b)) for a, b in (x.split(":") for x in text.split(","))]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="/tmp/1us0_prepared.pdb")
    ap.add_argument("--settings", default="60:4,60:3,100:3,150:3,100:2.5")
    ap.add_argument("--sample", type=int, default=8)
    ap.add_argument("--copies", default="1,2,4")
    ap.add_argument("--full", default=None, help="CORE:BUFFER for one full gradient")
    ap.add_argument("--skip-gradient", action="store_true")
    args = ap.parse_args(argv)
    out = sys.stdout
    inp = iotbx.pdb.input(args.model)
    h1 = inp.construct_hierarchy()
    cs = inp.crystal_symmetry()
    sites1 = np.array(h1.atoms().extract_xyz())
    settings = parse_pairs(args.settings)
    print("Fragment scaling, GFN2-xTB (tblite), %s: %d atoms; OMP_NUM_THREADS=%s;"
          " %d CPUs; load average %.1f" % (args.model, len(sites1),
                                          os.environ.get("OMP_NUM_THREADS"),
                                          os.cpu_count(), os.getloadavg()[0]), file=out)

    print("\n## Setup (partition) time", file=out)
    print("| system | atoms | symmetry | core:buffer | fragments | atoms mean/max"
          " | setup s |", file=out)
    print("|---|---:|---|---|---:|---:|---:|", file=out)
    systems = {1: h1}
    for n in map(int, args.copies.split(",")):
        if n not in systems:
            systems[n] = translated_copies(h1, n)
    evaluators = {}
    for n, h in sorted(systems.items()):
        for core, buffer in settings:
            for sym in ((True, False) if n == 1 else (False,)):
                ev, t = setup_time(h, cs if n == 1 else None, core, buffer, sym)
                sizes = np.array([f.n_atoms for f in ev.partition.fragments])
                print("| %dx | %d | %s | %d:%.1f | %d | %.0f / %d | %.2f |"
                      % (n, h.atoms_size(), "P21 images (%d)" % len(ev.partition.images)
                         if sym else "none", core, buffer, len(sizes), sizes.mean(),
                         sizes.max(), t), file=out)
                out.flush()
                if n == 1 and sym:
                    evaluators[(core, buffer)] = ev
    if args.skip_gradient:
        return

    print("\n## One gradient on 1x (P21 images in buffers): %d sampled fragments per"
          " setting, serial, 1 engine thread" % args.sample, file=out)
    print("Full-gradient times are EXTRAPOLATED: (a) mean sampled CPU s x fragments;"
          " (b) sum over all fragments of a*atoms^p fitted to every sample.", file=out)
    print("| core:buffer | fragments | sampled atoms | CPU s per fragment (mean, min-max)"
          " | wall/CPU | est. (a) CPU s |", file=out)
    print("|---|---:|---|---|---:|---:|", file=out)
    samples = {}
    for (core, buffer), ev in evaluators.items():
        c = serial_costs(sample_jobs(ev, sites1, args.sample))
        samples[(core, buffer)] = c
        print("| %d:%.1f | %d | %d-%d | %.1f (%.1f-%.1f) | %.1f | %.0f |"
              % (core, buffer, len(ev.partition.fragments), c[:, 0].min(), c[:, 0].max(),
                 c[:, 1].mean(), c[:, 1].min(), c[:, 1].max(),
                 c[:, 2].sum() / c[:, 1].sum(),
                 c[:, 1].mean() * len(ev.partition.fragments)),
              file=out)
        out.flush()
    allc = np.vstack(list(samples.values()))
    p, log_a = np.polyfit(np.log(allc[:, 0]), np.log(allc[:, 1]), 1)
    print("\nFit over all %d sampled fragments: CPU s = %.3g * atoms^%.2f"
          % (len(allc), np.exp(log_a), p), file=out)
    best = None
    for (core, buffer), ev in evaluators.items():
        atoms = np.array([f.n_atoms for f in ev.partition.fragments], dtype=float)
        est = float(np.sum(np.exp(log_a) * atoms ** p))
        print("  %d:%.1f: est. (b) full gradient %.0f CPU s serial, %.0f s on 2 idle cores"
              % (core, buffer, est, est / 2), file=out)
        if best is None or est < best[0]:
            best = (est, core, buffer, ev)
    est, core, buffer, ev = best
    # two fragments of median size (a pool of 2 is only as fast as its slower job)
    _, all_jobs = ev.jobs(sites1)
    order = np.argsort([len(j.symbols) for j in all_jobs])
    mid = len(order) // 2
    jobs = [all_jobs[i] for i in order[mid - 1:mid + 1]]
    pool = ProcessPoolExecutor(nproc=2)
    # start both workers (imports, engine) outside the timing, on an H2 job
    # whose cache key differs from every fragment's
    h2 = replace(jobs[0], key=("warm-up",), symbols=("H", "H"),
                 positions=np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.74]]),
                 settings=replace(jobs[0].settings, charge=0))
    pool.run([replace(h2, key=("warm-up", k)) for k in range(4)])
    parallel._CALCULATORS.clear()  # the sample above cached these fragments here
    c = serial_costs(jobs)
    t0 = time.perf_counter()
    pool.run(jobs)
    wall2 = time.perf_counter() - t0
    print("\nCheapest setting %d:%.1f, 2 median fragments (%s atoms): serial %.1f s"
          " wall (%.1f CPU s); 2-process pool (nproc=2) %.1f s wall: speed-up %.2f on"
          " this machine (load %.1f)"
          % (core, buffer, "+".join(str(len(j.symbols)) for j in jobs), c[:, 2].sum(),
             c[:, 1].sum(), wall2, c[:, 2].sum() / wall2, os.getloadavg()[0]), file=out)
    if args.full:
        core, buffer = parse_pairs(args.full)[0]
        ev = evaluators.get((core, buffer)) or setup_time(h1, cs, core, buffer, True)[0]
        ev.executor = pool
        t0 = time.perf_counter()
        _, g = ev.energy_and_gradient(sites1)
        print("Full gradient %d:%.1f, nproc=2: %.0f s (measured, %d fragments), finite: %s"
              % (core, buffer, time.perf_counter() - t0, len(ev.partition.fragments),
                 bool(np.isfinite(g).all())), file=out)
    pool.close()
    print("load average at end %.1f" % os.getloadavg()[0], file=out)


if __name__ == "__main__":
    main()

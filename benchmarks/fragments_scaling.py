"""Cost of fragment-based GFN2 gradients on prepared 1us0 and 2x / 4x systems.

    OMP_NUM_THREADS=1 python benchmarks/fragments_scaling.py [prepared.pdb]
        [--setting CORE:BUFFER] [--copies 1,2,4] [--nproc 1,2]
        [--setup-settings 60:4,40:3.5,...]

1. Setup (partition: cores, buffers, caps, charges; P21 symmetry images for
   1x) for every `--setup-settings` pair and every system size.
2. For `--setting` and every system: one complete gradient with nproc=1
   (serial, this process) and nproc=2 (process pool, workers started before
   the timing), all fragments computed (nothing extrapolated), then a second
   gradient at coordinates moved by 0.02 A rms, as a minimiser's next step
   (cached calculators restart from the previous wavefunction).  Each line
   reports wall and CPU seconds, fragments, atoms and whether every atom's
   gradient is finite.

1x = prepared 1us0 with P21 images in the buffers; 2x and 4x = translated
copies side by side (no symmetry).  Default input /tmp/1us0_prepared.pdb, made by
    python -m qr_phenix.prepare 1us0.pdb output.file_name=/tmp/1us0_prepared.pdb
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import qr_phenix  # noqa: E402,F401  (first: BLAS preload, see qr_phenix/__init__.py)

import argparse  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402

import numpy as np  # noqa: E402

import iotbx.pdb  # noqa: E402

from qr_phenix.engines.base import EngineSettings  # noqa: E402
from qr_phenix.fragmentation import fragment_solvent  # noqa: E402
from qr_phenix.fragmentation.evaluator import FragmentEvaluator  # noqa: E402
from qr_phenix.fragmentation.parallel import ProcessPoolExecutor, SerialExecutor  # noqa: E402

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
            c.atoms().set_xyz(c.atoms().extract_xyz() + (shift * k, 0, 0))
            model.append_chain(c)
    root.atoms().reset_i_seq()
    return root


def evaluator(hierarchy, cs, core, buffer, executor=None):
    # the refinement default: implicit water for every fragment
    settings = fragment_solvent(EngineSettings(name="gfn2"), "water", log=None)
    return FragmentEvaluator(hierarchy, settings, crystal_symmetry=cs,
                             core_size=core, buffer_radius=buffer,
                             include_symmetry=cs is not None, executor=executor)


def cpu_seconds():
    """CPU time of this process (the serial runs; pool workers are not counted)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def parse_pairs(text):
    return [(int(a), float(b)) for a, b in (x.split(":") for x in text.split(","))]


def warm_up(pool):
    """Start the pool's workers (spawn, imports, engine) outside the timing."""
    from qr_phenix.fragmentation.parallel import FragmentJob
    job = FragmentJob(key=("warm-up",), settings=EngineSettings(name="gfn2"),
                      symbols=("H", "H"), positions=np.array([[0, 0, 0], [0, 0, 0.74]]))
    pool.run([replace(job, key=("warm-up", k)) for k in range(2 * pool.nproc)])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="/tmp/1us0_prepared.pdb")
    ap.add_argument("--setting", default="40:3.5", help="CORE:BUFFER for the gradients")
    ap.add_argument("--setup-settings", default="60:4,40:3.5,30:3.5,60:3.5,100:4")
    ap.add_argument("--copies", default="1,2,4")
    ap.add_argument("--nproc", default="1,2")
    ap.add_argument("--skip-gradient", action="store_true")
    args = ap.parse_args(argv)
    out = sys.stdout
    inp = iotbx.pdb.input(args.model)
    h1 = inp.construct_hierarchy()
    cs1 = inp.crystal_symmetry()
    print("Fragment scaling, GFN2-xTB (tblite), %s: %d atoms; OMP_NUM_THREADS=%s;"
          " %d CPUs; load average at start %.1f" % (
              args.model, h1.atoms_size(), os.environ.get("OMP_NUM_THREADS"),
              os.cpu_count(), os.getloadavg()[0]), file=out)
    systems = {}
    for n in map(int, args.copies.split(",")):
        systems[n] = (h1, cs1) if n == 1 else (translated_copies(h1, n), None)

    print("\n## Setup (partition) time, wall s", file=out)
    print("| system | atoms | symmetry images | core:buffer | fragments | atoms mean/max"
          " | total atoms | setup s |", file=out)
    print("|---|---:|---:|---|---:|---:|---:|---:|", file=out)
    for n, (h, cs) in sorted(systems.items()):
        for core, buffer in parse_pairs(args.setup_settings):
            ev = evaluator(h, cs, core, buffer)
            t0 = time.perf_counter()
            ev.update_partition(np.array(h.atoms().extract_xyz()))
            t = time.perf_counter() - t0
            sizes = np.array([f.n_atoms for f in ev.partition.fragments])
            print("| %dx | %d | %d | %d:%.1f | %d | %.0f / %d | %d | %.2f |" % (
                n, h.atoms_size(), len(ev.partition.images), core, buffer, len(sizes),
                sizes.mean(), sizes.max(), sizes.sum(), t), file=out)
            out.flush()
    if args.skip_gradient:
        return

    core, buffer = parse_pairs(args.setting)[0]
    print("\n## One GFN2 gradient (ALPB water), all fragments computed, core %d /"
          " buffer %.1f A" % (core, buffer), file=out)
    print("cold: first gradient (fresh calculators); warm: the next gradient after a"
          " 0.02 A rms move (calculators restart from the previous wavefunction)",
          file=out)
    print("| system | atoms | nproc | fragments | setup s | cold wall s | cold CPU s"
          " | warm wall s | all gradients finite | load |", file=out)
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|", file=out)
    rng = np.random.default_rng(0)
    for n, (h, cs) in sorted(systems.items()):
        sites = np.array(h.atoms().extract_xyz())
        moved = sites + rng.normal(0, 0.02 / np.sqrt(3), sites.shape)
        for nproc in map(int, args.nproc.split(",")):
            executor = SerialExecutor() if nproc == 1 else ProcessPoolExecutor(nproc=nproc)
            if nproc > 1:
                warm_up(executor)
            ev = evaluator(h, cs, core, buffer, executor)
            t0, c0 = time.perf_counter(), cpu_seconds()
            ev.update_partition(sites)
            setup = time.perf_counter() - t0
            _, g = ev.energy_and_gradient(sites)
            cold, cold_cpu = time.perf_counter() - t0, cpu_seconds() - c0
            t1 = time.perf_counter()
            _, g2 = ev.energy_and_gradient(moved)
            warm = time.perf_counter() - t1
            finite = bool(np.isfinite(g).all() and np.isfinite(g2).all())
            print("| %dx | %d | %d | %d | %.2f | %.1f | %s | %.1f | %s | %.1f |" % (
                n, len(sites), nproc, len(ev.partition.fragments), setup, cold,
                "%.1f" % cold_cpu if nproc == 1 else "-", warm, finite,
                os.getloadavg()[0]), file=out)
            out.flush()
            if nproc > 1:
                executor.close()


if __name__ == "__main__":
    main()

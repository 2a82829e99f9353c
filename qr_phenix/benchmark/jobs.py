"""Parallel, resumable refinement jobs: one `python -m qr_phenix.refine`
process per job, `nproc` at a time.

One single-threaded process per job (OMP_NUM_THREADS=1, passive OpenMP
waits): on few cores, process-level parallelism over models beats threaded
engines (two 1-thread processes beat one 2-thread process), and tblite
gives wrong energies with several OpenMP threads on some machines
(engines/tblite.py).

A job is done when its JSON exists. qr.refine writes into a private
`<name>.partial/` folder; on success the files are moved into place with the
JSON last, so an interrupted run never leaves a JSON for an unfinished job.
"""

import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import List

from qr_phenix.threads import child_environment

#: method -> qr.refine arguments; one protocol for all, weights by the program
METHODS = {
    "cctbx": ["qm_restraints.restraints=cctbx"],
    # in vacuum, as published (the qr.refine default is implicit water)
    "gfn2": ["qm_restraints.restraints=qm", "qm_restraints.engine=gfn2",
             "qm_restraints.engine_options.solvent=None"],
    "pm7": ["qm_restraints.restraints=qm", "qm_restraints.engine=pm7",
            "qm_restraints.engine_options.solvent=None"],
    # opt-in, hours per refinement of the 94-atom helix on 2 CPU cores (engines/pyscf.py)
    "hf_d3": ["qm_restraints.restraints=qm", "qm_restraints.engine=hf",
              "qm_restraints.engine_options.basis=6-31g",
              "qm_restraints.engine_options.dispersion=d3bj"],
    "bp86": ["qm_restraints.restraints=qm", "qm_restraints.engine=dft",
             "qm_restraints.engine_options.xc=bp86",
             "qm_restraints.engine_options.basis=def2-svp",
             "qm_restraints.engine_options.dispersion=d3bj"],
}
DEFAULT_METHODS = ("cctbx", "gfn2", "pm7")
#: stated cost of one refinement on 2 CPU cores (measured): the opt-in reason
COST = {
    "cctbx": "seconds",
    "gfn2": "~0.1-0.4 s per gradient, about a minute per refinement",
    "pm7": "~0.2 s per gradient, about a minute per refinement",
    "hf_d3": "~10 min per gradient (PySCF HF/6-31G+D3): days per refinement on 2 cores",
    "bp86": "> 10 min per gradient (PySCF BP86/def2-SVP): days per refinement on 2 cores",
}
# the published protocol: coordinates only, no bulk solvent (the data have none).
# No validation: the study scores its own helix H-bonds (metrics.py); the two
# probe2 clashscores of validation=ends cost ~3.4 s a job and decide nothing
# in X-ray refinement, where clashscores are not measured per cycle.
COMMON_ARGS = ["refinement.bulk_solvent=False", "refinement.adp=none",
               "refinement.validation=off", "output.overwrite=True"]


@dataclass
class Job:
    method: str
    dose: float
    index: int
    start_pdb: str
    data_mtz: str
    out_dir: str
    extra_args: List[str] = field(default_factory=list)

    @property
    def name(self):
        return "%s_d%.1f_m%02d" % (self.method, self.dose, self.index)

    @property
    def prefix(self):
        return os.path.join(self.out_dir, self.name)

    @property
    def json_path(self):
        return self.prefix + ".json"

    def done(self):
        return os.path.isfile(self.json_path)

    def command(self, prefix):
        return ([sys.executable, "-m", "qr_phenix.refine", self.start_pdb, self.data_mtz]
                + METHODS[self.method] + COMMON_ARGS + list(self.extra_args)
                + ["output.prefix=%s" % prefix])


def child_env():
    return child_environment(1)


def run_job(job, timeout=None):
    """Run one job; returns (job, ok, seconds, message)."""
    partial = job.prefix + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    tmp_prefix = os.path.join(partial, job.name)
    t0 = time.time()
    with open(tmp_prefix + ".stdout", "w") as out:
        try:
            rc = subprocess.call(job.command(tmp_prefix), stdout=out, stderr=subprocess.STDOUT,
                                 env=child_env(), timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = "timeout"
    seconds = time.time() - t0
    if rc != 0 or not os.path.isfile(tmp_prefix + ".json"):
        msg = _tail(tmp_prefix + ".stdout")
        # keep the evidence next to the job name; rerunning retries the job
        with open(job.prefix + ".failed", "w") as f:
            f.write("rc=%s after %.1f s\n%s\n" % (rc, seconds, msg))
        shutil.rmtree(partial, ignore_errors=True)
        return job, False, seconds, "rc=%s: %s" % (rc, msg.strip().splitlines()[-1:] or "")
    for ext in (".pdb", ".cif", ".log", ".stdout"):
        if os.path.isfile(tmp_prefix + ext):
            os.replace(tmp_prefix + ext, job.prefix + ext)
    _rewrite_outputs(tmp_prefix + ".json", job)
    os.replace(tmp_prefix + ".json", job.json_path)
    shutil.rmtree(partial, ignore_errors=True)
    if os.path.exists(job.prefix + ".failed"):
        os.remove(job.prefix + ".failed")
    return job, True, seconds, ""


def _rewrite_outputs(json_path, job):
    """Point the JSON's output paths at the files' final places."""
    import json
    with open(json_path) as f:
        d = json.load(f)
    outs = d.get("outputs") or {}
    for key in list(outs):
        ext = os.path.splitext(str(outs[key]))[1]
        outs[key] = os.path.abspath(job.prefix + ext)
    d["outputs"] = outs
    with open(json_path, "w") as f:
        json.dump(d, f, indent=1)


def _tail(path, n=15):
    try:
        with open(path) as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def seconds_left(finished, waiting, nproc):
    """Wall seconds the waiting jobs need: each method's mean job time so far,
    summed over the waiting jobs and shared by nproc processes; None while a
    waiting method has no finished job to time it by.

    finished: method -> [seconds of its finished jobs]; waiting: their methods.
    Jobs run model by model, every method in turn, so each method has a time
    after the first model's jobs (a PM7 job takes ~2x a GFN2 one, ~25x a
    library one: a plain mean over all jobs would be off by the mix)."""
    mean = {m: sum(t) / len(t) for m, t in finished.items() if t}
    if any(m not in mean for m in waiting):
        return None
    return sum(mean[m] for m in waiting) / max(1, nproc)


def run_all(jobs, nproc=1, log=sys.stdout, timeout=None):
    """Run the jobs that are not done, nproc at a time; returns (n_run, n_failed).
    After each job: its time, the time so far and the estimate for the rest."""
    todo = [j for j in jobs if not j.done()]
    print("Jobs: %d total, %d done, %d to run on %d processes"
          % (len(jobs), len(jobs) - len(todo), len(todo), nproc), file=log, flush=True)
    if not todo:
        return 0, 0
    # model by model, slow methods first within each: an interrupted run still
    # holds a balanced subset (every method and dose), and the tail is short
    order = {m: i for i, m in enumerate(("bp86", "hf_d3", "pm7", "gfn2", "cctbx"))}
    todo.sort(key=lambda j: (j.index, order.get(j.method, 0), -j.dose))
    n_failed = 0
    finished = {}
    t0 = time.time()
    with ThreadPoolExecutor(max_workers=max(1, nproc)) as pool:
        futures = [pool.submit(run_job, j, timeout) for j in todo]
        waiting = [j.method for j in todo]
        for k, fut in enumerate(as_completed(futures), start=1):
            job, ok, seconds, msg = fut.result()
            n_failed += not ok
            finished.setdefault(job.method, []).append(seconds)
            waiting.remove(job.method)
            left = seconds_left(finished, waiting, nproc)
            eta = "" if left is None else ", ~%.0f min left" % (left / 60.0)
            print("  [%d/%d] %-22s %s %6.1f s (%.0f min so far%s) %s"
                  % (k, len(todo), job.name, "ok    " if ok else "FAILED", seconds,
                     (time.time() - t0) / 60.0, eta, msg), file=log, flush=True)
    return len(todo), n_failed

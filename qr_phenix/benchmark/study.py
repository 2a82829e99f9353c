"""The 1us0 polyglycine-helix study (Zheng et al. 2017): PHIL and the steps
behind qr.benchmark (programs/benchmark.py), run as

    python -m qr_phenix.benchmark.helix_1us0 out_dir [methods=cctbx,gfn2,pm7]
        [doses=0.3,0.6,0.9,1.2,1.5] [models_per_dose=10] [nproc=N] [quick=True]
        [entry=/path/to/1us0.pdb] [published_reference=/path/to/a87_99_h.pdb]
        [use_published_reference=False]

Steps: reference from the 1us0 entry -> simulated data -> MD-perturbed starts
-> qr.refine of every start with every method (parallel, resumable) ->
results.json, report.md, fig4_r_factors.png, fig5_hbonds.png in out_dir.
Rerunning with the same out_dir skips finished work; changing the study
(reference, data, doses, seeds) needs a new out_dir.
"""

import json
import os
import shutil
import sys
import time

from libtbx.utils import Sorry

from qr_phenix.benchmark import data as data_mod
from qr_phenix.benchmark import jobs as jobs_mod
from qr_phenix.benchmark import machine, metrics, perturb, published, reference, report
from qr_phenix.files import atomic_write

QUICK = dict(methods=["cctbx", "gfn2"], doses=[0.3, 1.5], models_per_dose=2)

master_phil_str = """
output_dir = None
  .type = path
  .help = "Folder for all outputs; reused (resumed) when it exists"
  .short_caption = Output folder
methods = cctbx gfn2 pm7
  .type = strings
  .help = "Restraints to compare: cctbx gfn2 pm7 (default); hf_d3 bp86 are opt-in \
           (PySCF: hours to days per refinement on a few CPU cores)"
  .short_caption = Methods
doses = 0.3 0.6 0.9 1.2 1.5
  .type = floats
  .help = "Perturbation doses: mean atomic shift from the reference (A)"
  .short_caption = Doses
models_per_dose = 10
  .type = int
  .help = "Perturbed models per dose, each with its own recorded MD seed"
  .short_caption = Models per dose
nproc = 1
  .type = int
  .help = "Refinements run at the same time (one single-threaded process each)"
  .short_caption = Processes
quick = False
  .type = bool
  .help = "Quick check: 2 doses (0.3, 1.5) x 2 models x cctbx,gfn2, unless those \
           are set explicitly"
  .short_caption = Quick mode
entry = None
  .type = path
  .help = "1us0 PDB entry file; default: fetch 1us0 from the PDB (needs network)"
  .short_caption = 1us0 entry
published_reference = None
  .type = path
  .help = "The published reference a87_99_h.pdb, to compare the built reference with"
  .short_caption = Published reference
use_published_reference = False
  .type = bool
  .help = "Use published_reference as the reference instead of building it"
  .short_caption = Use the published reference
data_seed = 0
  .type = int
  .help = "Seed of the free-R flags and the 5 %% amplitude error"
md_seed = 0
  .type = int
  .help = "Base seed of the MD perturbations (model seeds derive from it)"
md_temperature = 1000
  .type = float
  .help = "MD temperature (K)"
job_timeout = None
  .type = float
  .help = "Seconds after which one refinement is killed and counted as failed"
run_jobs = True
  .type = bool
  .help = "False: only analyse the refinements already finished in output_dir \
           (a partial report while a run is still going)"
refine_args = None
  .type = strings
  .help = "Extra qr.refine key=value arguments for every job (same for all methods)"
"""


def _log(log, text):
    print(text, file=log, flush=True)


def apply_quick(params):
    """quick=True replaces methods/doses/models that were left at their defaults."""
    if not params.quick:
        return params
    if params.methods == ["cctbx", "gfn2", "pm7"]:
        params.methods = QUICK["methods"]
    if list(params.doses) == [0.3, 0.6, 0.9, 1.2, 1.5]:
        params.doses = QUICK["doses"]
    if params.models_per_dose == 10:
        params.models_per_dose = QUICK["models_per_dose"]
    return params


def validate(params):
    if not params.output_dir:
        raise Sorry("Give the output folder: python -m qr_phenix.benchmark.helix_1us0 out_dir")
    unknown = [m for m in params.methods if m not in jobs_mod.METHODS]
    if unknown:
        raise Sorry("Unknown method(s) %s; choose from %s" % (
            ", ".join(unknown), ", ".join(jobs_mod.METHODS)))
    if not params.doses or any(d <= 0 for d in params.doses):
        raise Sorry("doses must be positive numbers (A), e.g. doses=0.3,0.6")
    if params.models_per_dose < 1 or params.nproc < 1:
        raise Sorry("models_per_dose and nproc must be >= 1")
    if params.use_published_reference and not params.published_reference:
        raise Sorry("use_published_reference=True needs published_reference=a87_99_h.pdb")
    for p in (params.entry, params.published_reference):
        if p and not os.path.isfile(p):
            raise Sorry("File not found: %s" % p)


def _study_key(params):
    """Settings that define the inputs; a resumed run must not change them."""
    return {"use_published_reference": bool(params.use_published_reference),
            "data_seed": params.data_seed, "md_seed": params.md_seed,
            "md_temperature": params.md_temperature,
            "refine_args": list(params.refine_args or [])}


def _check_resume(out, params):
    path = os.path.join(out, "study.json")
    key = _study_key(params)
    if os.path.isfile(path):
        with open(path) as f:
            old = json.load(f)
        if old != key:
            raise Sorry("%s was made with other settings (%s); use a new output folder."
                        % (out, ", ".join("%s=%s" % (k, old.get(k)) for k in key
                                          if old.get(k) != key[k])))
    else:
        with open(path, "w") as f:
            json.dump(key, f, indent=1)


def prepare_reference(params, out, log):
    path = os.path.join(out, "reference.pdb")
    info = {"file": path}
    if params.use_published_reference:
        if not os.path.isfile(path):
            shutil.copyfile(params.published_reference, path)
        info["source"] = "published a87_99_h.pdb (%s)" % params.published_reference
        return path, info
    entry = reference.read_entry(params.entry, log=log)
    text = reference.build(entry)
    if not os.path.isfile(path):
        reference.write(text, path)
    info["source"] = "built from 1us0 (%s)" % (params.entry or "fetched")
    if params.published_reference:
        c = reference.compare(text, params.published_reference)
        info["comparison"] = c.as_dict()
        _log(log, "Reference vs published: rmsd all %.3f A, heavy %.3f A, H %.3f A"
             " (max %.2f A at %s)" % (c.rmsd_all, c.rmsd_heavy, c.rmsd_h, c.max_deviation,
                                      c.max_deviation_atom))
    return path, info


def prepare_data(params, ref_path, out, log):
    path = os.path.join(out, "data.mtz")
    if not os.path.isfile(path):
        tmp = path + ".tmp.mtz"
        data_mod.simulate(ref_path, tmp, seed=params.data_seed)
        os.replace(tmp, path)
    s = data_mod.summary(path)
    _log(log, "Data: %d reflections, %.2f-%.2f A, %d free" % (
        s["n_reflections"], s["d_max"], s["d_min"], s["n_free"]))
    return path, s


def prepare_starts(params, ref_path, out, log):
    """{(dose, index): (pdb path, Perturbation dict)}; existing models are kept."""
    folder = os.path.join(out, "starts")
    os.makedirs(folder, exist_ok=True)
    record_path = os.path.join(folder, "starts.json")
    records = {}
    if os.path.isfile(record_path):
        with open(record_path) as f:
            records = json.load(f)
    perturber = None
    starts = {}
    for dose in params.doses:
        for i in range(params.models_per_dose):
            name = "d%.1f_m%02d" % (dose, i)
            path = os.path.join(folder, name + ".pdb")
            if not (os.path.isfile(path) and name in records):
                if perturber is None:
                    perturber = perturb.Perturber(ref_path, temperature=params.md_temperature)
                seed = perturb.seed_for(dose, i, params.md_seed)
                text, rec = perturber.run(dose, seed)
                atomic_write(path, text)
                records[name] = rec.as_dict()
                if not rec.reached:
                    _log(log, "  warning: %s stopped at %d MD steps with mean shift %.3f A"
                         % (name, perturb.MAX_STEPS, rec.mean_shift))
            starts[(dose, i)] = (path, records[name])
    report.write_json(records, record_path)
    _log(log, "Starts: %d models in %s" % (len(starts), folder))
    return starts


def make_jobs(params, starts, data_path, out):
    jobs = []
    for method in params.methods:
        folder = os.path.join(out, "refine", method)
        os.makedirs(folder, exist_ok=True)
        for (dose, i), (path, _) in sorted(starts.items()):
            jobs.append(jobs_mod.Job(method=method, dose=dose, index=i, start_pdb=path,
                                     data_mtz=data_path, out_dir=folder,
                                     extra_args=list(params.refine_args or [])))
    return jobs


def _model_from_job(job, scorer):
    with open(job.json_path) as f:
        d = json.load(f)
    final = d["final"]
    pdb = (d.get("outputs") or {}).get("pdb") or job.prefix + ".pdb"
    if not os.path.isfile(pdb):
        pdb = job.prefix + ".pdb"
    m = {"index": job.index, "r_work": final.get("r_work"), "r_free": final.get("r_free"),
         "gap": final.get("gap"), "bond_rmsd": final.get("bond_rmsd"),
         "angle_rmsd": final.get("angle_rmsd"),
         "engine_calls": (d.get("engine") or {}).get("calls"),
         "engine_seconds": (d.get("engine") or {}).get("seconds"),
         "wall_seconds": d.get("wall_seconds"),
         "start_r_work": (d.get("start") or {}).get("r_work"),
         "start_r_free": (d.get("start") or {}).get("r_free")}
    if m["gap"] is None and None not in (m["r_work"], m["r_free"]):
        m["gap"] = m["r_free"] - m["r_work"]
    m.update(scorer(pdb))
    return m


def analyse(params, ref_path, data_path, starts, jobs, log):
    scorer = metrics.Scorer(ref_path)
    n_hb = len(scorer.pairs)
    if n_hb == 0:
        raise Sorry("The reference has no O(i)..H(i+4) pairs within 1.7-2.2 A")
    stats = metrics.StartModelStats(ref_path, data_path)
    start_models = {}
    for (dose, i), (path, rec) in sorted(starts.items()):
        m = {"index": i, "seed": rec["seed"], "mean_shift": rec["mean_shift"]}
        m.update(stats(path))
        m.update(scorer(path))
        start_models.setdefault(report.dose_key(dose), []).append(m)
    results_starts = {k: dict(report.summarise(v, n_hb), models=v)
                      for k, v in start_models.items()}
    methods, failed = {}, []
    for job in jobs:
        per = methods.setdefault(job.method, {})
        k = report.dose_key(job.dose)
        if not job.done():
            failed.append(job.name)   # failed, or not run yet (run_jobs=False)
            continue
        per.setdefault(k, []).append(_model_from_job(job, scorer))
    results_methods = {}
    for method in params.methods:
        results_methods[method] = {k: dict(report.summarise(v, n_hb), models=v)
                                   for k, v in methods.get(method, {}).items()}
    return n_hb, results_starts, results_methods, failed


def run_study(params, log=sys.stdout):
    """The whole study; returns the results dict (also written to results.json)."""
    t0 = time.time()
    params = apply_quick(params)
    validate(params)
    out = os.path.abspath(params.output_dir)
    os.makedirs(out, exist_ok=True)
    _check_resume(out, params)
    _log(log, "1us0 helix benchmark in %s: methods %s, doses %s, %d models per dose, %d"
         " processes" % (out, ",".join(params.methods), ",".join("%.1f" % d for d in
                                                                params.doses),
                          params.models_per_dose, params.nproc))
    for m in params.methods:
        if m in ("hf_d3", "bp86"):
            _log(log, "  note: %s is opt-in and costs %s" % (m, jobs_mod.COST[m]))
    ref_path, ref_info = prepare_reference(params, out, log)
    data_path, data_info = prepare_data(params, ref_path, out, log)
    starts = prepare_starts(params, ref_path, out, log)
    jobs = make_jobs(params, starts, data_path, out)
    speed = machine.gfn2_gradient_seconds() if params.run_jobs else None
    if speed is not None:
        _log(log, "  %s" % machine.speed_line(speed))
    t_jobs = time.time()
    n_run = n_failed = 0
    if params.run_jobs:
        n_run, n_failed = jobs_mod.run_all(jobs, nproc=params.nproc, log=log,
                                           timeout=params.job_timeout)
    jobs_seconds = time.time() - t_jobs
    n_hb, starts_res, methods_res, failed = analyse(params, ref_path, data_path, starts,
                                                     jobs, log)
    results = {
        "settings": {"methods": list(params.methods), "doses": list(params.doses),
                     "models_per_dose": params.models_per_dose, "nproc": params.nproc,
                     "mode": "quick" if params.quick else "full",
                     "data_seed": params.data_seed, "md_seed": params.md_seed,
                     "md_temperature": params.md_temperature,
                     "error_percent": data_mod.ERROR_PERCENT,
                     "refine_args": list(params.refine_args or [])},
        "doses": [float(d) for d in params.doses],
        "reference": ref_info,
        "data": data_info,
        "n_hbonds": n_hb,
        "starts": starts_res,
        "methods": methods_res,
        "failed": failed,
        "jobs": {"total": len(jobs), "run_now": n_run, "failed_now": n_failed,
                 "seconds_now": jobs_seconds},
        "wall_seconds": time.time() - t0,
        "machine_gfn2_helix_gradient_s": speed,
        "cost": {m: jobs_mod.COST[m] for m in params.methods},
        "published": {"hbonds_at_1_5": published.HBONDS_AT_1_5,
                      "start_r_work": {report.dose_key(k): v for k, v in
                                       published.START_R_WORK.items()},
                      "start_r_free": {report.dose_key(k): v for k, v in
                                       published.START_R_FREE.items()},
                      "start_hbonds": {report.dose_key(k): v for k, v in
                                       published.START_HBONDS.items()}},
    }
    results["refine_seconds_sum"] = sum(
        m.get("wall_seconds") or 0 for per in methods_res.values() for s in per.values()
        for m in s["models"])
    results["checks"] = report.acceptance(results)
    figs = [report.plot_r_factors(results, os.path.join(out, "fig4_r_factors.png")),
            report.plot_hbonds(results, os.path.join(out, "fig5_hbonds.png"))]
    results["figures"] = figs
    report.write_json(results, os.path.join(out, "results.json"))
    report.write_markdown(results, os.path.join(out, "report.md"), figs)
    _log(log, "\n" + report.table(results))
    _log(log, "\nWrote %s/report.md, results.json, fig4_r_factors.png, fig5_hbonds.png"
         " (%.0f s)" % (out, results["wall_seconds"]))
    return results


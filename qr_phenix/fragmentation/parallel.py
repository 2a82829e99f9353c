"""Run fragment calculations: in-process, on a process pool, or on Dask.

Every executor has `run(jobs) -> list of (energy kcal/mol, gradient (k,3)
kcal/mol/A)` in job order.  A job is a small picklable record (engine
settings, symbols, positions); the calculator lives in the worker, cached by
fragment key, so in-process engines restart from their previous wavefunction
whenever the same fragment lands on the same worker again.

Threads: each worker runs one fragment at a time with
`threads_per_worker` engine threads (OMP_NUM_THREADS is set before the engine
is imported, and the engine pins its threads per call).  NOTES.md measured
that two 1-thread processes beat one 2-thread process for xTB, so the
default is nproc processes x 1 thread.

Failures: a fragment whose calculation raises is re-run (fresh calculator)
up to `retries` times; a worker that dies (process pool: BrokenProcessPool;
Dask: the scheduler notices the lost worker) has its fragments re-run on a
new or another worker.  Only when a fragment fails every time does the
evaluation fail, with the fragment's own error.
"""

import collections
import os
import sys
import time
from dataclasses import dataclass, replace
from typing import Optional, Tuple

import numpy as np

from qr_phenix.engines.base import EngineError, EngineSettings


@dataclass
class FragmentJob:
    key: Tuple           # (partition generation, fragment index): calculator cache key
    settings: EngineSettings
    symbols: tuple
    positions: np.ndarray
    #: testing hook: "exit" kills the worker process, "raise" raises, on the
    #: attempts listed in fail_attempts (counted in a file, across processes)
    fail_mode: Optional[str] = None
    fail_marker: Optional[str] = None


_CALCULATORS = collections.OrderedDict()
_CACHE_SIZE = 1024


def _set_thread_environment(threads):
    # must happen before an engine library (OpenMP) is first loaded
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, int(threads))))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(max(1, int(threads))))
    os.environ.setdefault("MKL_NUM_THREADS", str(max(1, int(threads))))


def make_calculator(settings):
    """The engine registry's factory (qr_phenix.engines.make_calculator)."""
    try:
        from qr_phenix.engines import make_calculator as factory
    except ImportError:
        # registry not importable: the in-process xTB engines still are
        from qr_phenix.engines import tblite
        if settings.name not in tblite.METHODS:
            raise
        factory = tblite.factory(settings.name)
    return factory(settings)


def _calculator(job, fresh=False):
    key = (job.key, tuple(job.symbols), job.settings.charge, job.settings.multiplicity)
    calc = None if fresh else _CALCULATORS.get(key)
    if calc is None:
        calc = make_calculator(job.settings)
        _CALCULATORS[key] = calc
        while len(_CALCULATORS) > _CACHE_SIZE:
            _CALCULATORS.popitem(last=False)
    else:
        _CALCULATORS.move_to_end(key)
    return key, calc


def _maybe_fail(job):
    if not job.fail_mode or not job.fail_marker:
        return
    # fail only the first time this job's marker is seen (any process)
    try:
        fd = os.open(job.fail_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    if job.fail_mode == "exit":
        os._exit(17)
    raise EngineError("injected failure for fragment %s" % (job.key,))


def run_job(job, fresh=False):
    """Worker entry point: (energy kcal/mol, gradient (k,3) kcal/mol/A, seconds)."""
    _set_thread_environment(job.settings.threads)
    from qr_phenix.engines.base import energy_and_gradient
    _maybe_fail(job)
    t0 = time.perf_counter()
    key, calc = _calculator(job, fresh=fresh)
    try:
        eg = energy_and_gradient(calc, job.symbols, job.positions)
    except Exception:
        _CALCULATORS.pop(key, None)  # its wavefunction is no restart
        raise
    return eg.energy, eg.gradient, time.perf_counter() - t0


def _describe(job, error):
    return "fragment %d (%d atoms): %s: %s" % (
        job.key[-1] + 1, len(job.symbols), type(error).__name__, error)


class SerialExecutor:
    """In this process, one fragment after another."""

    name = "serial"
    nproc = 1

    def __init__(self, retries=2, threads_per_worker=1):
        self.threads = max(1, int(threads_per_worker))
        self.retries = retries
        self.n_retried = 0

    def run(self, jobs):
        out = []
        for job in jobs:
            error = None
            for attempt in range(self.retries + 1):
                try:
                    out.append(run_job(job, fresh=attempt > 0))
                    break
                except Exception as e:
                    error = e
                    self.n_retried += 1
            else:
                raise EngineError("Fragment calculation failed %d times; last error: %s"
                                  % (self.retries + 1, _describe(job, error)))
        return out

    def close(self):
        pass


def _pool_initializer(threads):
    _set_thread_environment(threads)


class ProcessPoolExecutor:
    """A pool of `nproc` worker processes on this machine (spawned, so no
    OpenMP state is inherited through fork)."""

    name = "process pool"

    def __init__(self, nproc=2, threads_per_worker=1, retries=2):
        self.nproc = max(1, int(nproc))
        self.threads = max(1, int(threads_per_worker))
        self.retries = retries
        self.n_retried = 0
        self.n_pool_restarts = 0
        self._pool = None

    def _new_pool(self):
        import concurrent.futures
        import multiprocessing
        return concurrent.futures.ProcessPoolExecutor(
            max_workers=self.nproc, mp_context=multiprocessing.get_context("spawn"),
            initializer=_pool_initializer, initargs=(self.threads,))

    def run(self, jobs):
        from concurrent.futures.process import BrokenProcessPool
        results = [None] * len(jobs)
        attempts = [0] * len(jobs)
        errors = {}
        # largest fragments first: the pool then ends with small jobs and its
        # workers finish together (longest-processing-time-first scheduling)
        pending = sorted(range(len(jobs)), key=lambda k: -len(jobs[k].symbols))
        while pending:
            if self._pool is None:
                self._pool = self._new_pool()
            futures = {k: self._pool.submit(run_job, jobs[k], attempts[k] > 0) for k in pending}
            failed, broken = [], False
            for k, fut in futures.items():
                try:
                    results[k] = fut.result()
                except BrokenProcessPool as e:
                    broken = True
                    failed.append(k)
                    errors[k] = e
                except Exception as e:
                    failed.append(k)
                    errors[k] = e
            if broken:
                # a worker died: every unfinished fragment is re-run on a new pool
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
                self.n_pool_restarts += 1
            for k in failed:
                attempts[k] += 1
                self.n_retried += 1
                if attempts[k] > self.retries:
                    raise EngineError(
                        "Fragment calculation failed %d times; last error: %s"
                        % (attempts[k], _describe(jobs[k], errors[k])))
            pending = failed
        return results

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class DaskExecutor:
    """Dask distributed: an existing scheduler (`tcp://host:port`) or a local
    cluster of `nproc` worker processes with one task each."""

    name = "dask"

    def __init__(self, scheduler="local", nproc=2, threads_per_worker=1, retries=2,
                 client=None):
        try:
            import distributed
        except ImportError as e:
            raise EngineError("parallel.scheduler needs Dask: pip install distributed"
                              " (%s)" % e) from e
        self.threads = max(1, int(threads_per_worker))
        self.retries = retries
        self.n_retried = 0
        self._cluster = None
        if client is not None:
            self.client = client
        elif scheduler in (None, "", "local"):
            env = {"OMP_NUM_THREADS": str(self.threads), "OMP_WAIT_POLICY": "PASSIVE",
                   "OPENBLAS_NUM_THREADS": str(self.threads)}
            # one task per worker process; the engine threads come from env
            self._cluster = distributed.LocalCluster(
                n_workers=max(1, int(nproc)), threads_per_worker=1, processes=True,
                dashboard_address=None, env=env)
            self.client = distributed.Client(self._cluster)
        else:
            self.client = distributed.Client(scheduler)
        self.nproc = len(self.client.scheduler_info().get("workers", {})) or nproc

    def run(self, jobs):
        import distributed
        jobs = [replace(j, settings=replace(j.settings, threads=self.threads)) for j in jobs]
        # pure=False: the same positions must be recomputed after a failure;
        # retries covers exceptions, and the scheduler itself re-runs tasks of
        # a worker that died (up to distributed.scheduler.allowed-failures)
        # priority = size: large fragments start first, as in the process pool
        futures = [self.client.submit(run_job, j, pure=False, retries=self.retries,
                                      priority=len(j.symbols)) for j in jobs]
        try:
            return self.client.gather(futures)
        except distributed.client.FutureCancelledError as e:
            raise EngineError("Dask cancelled fragment calculations: %s" % e) from e
        except EngineError:
            raise
        except Exception as e:
            bad = [j for j, f in zip(jobs, futures) if f.status == "error"]
            what = _describe(bad[0], e) if bad else str(e)
            raise EngineError("Fragment calculation failed on Dask after %d retries: %s"
                              % (self.retries, what)) from e

    def close(self):
        try:
            self.client.close()
        finally:
            if self._cluster is not None:
                self._cluster.close()


def make_executor(parallel_params, retries=2, log=None):
    """Executor from a `parallel` PHIL extract (nproc, scheduler, threads_per_worker)."""
    nproc = max(1, int(getattr(parallel_params, "nproc", 1) or 1))
    threads = max(1, int(getattr(parallel_params, "threads_per_worker", 1) or 1))
    scheduler = getattr(parallel_params, "scheduler", None)
    if scheduler:
        ex = DaskExecutor(scheduler=scheduler, nproc=nproc, threads_per_worker=threads,
                          retries=retries)
    elif nproc > 1:
        ex = ProcessPoolExecutor(nproc=nproc, threads_per_worker=threads, retries=retries)
    else:
        ex = SerialExecutor(retries=retries, threads_per_worker=threads)
    if log is not None:
        print("  fragments run on: %s, %d worker(s) x %d engine thread(s)"
              % (ex.name, ex.nproc, threads), file=log)
    return ex

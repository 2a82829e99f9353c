"""Run fragment calculations: in-process, on a process pool, or on Dask.

Every executor has `run(jobs, on_done=None) -> list of (energy kcal/mol,
gradient (k,3) kcal/mol/A, seconds)` in job order; `on_done(done, total)` is
called as fragments finish (progress reports).  A job is a small picklable record (engine
settings, symbols, positions); the calculator lives in the worker, cached by
fragment key, so in-process engines restart from their previous wavefunction
whenever the same fragment lands on the same worker again.

Threads: each worker runs one fragment at a time with
`threads_per_worker` engine threads (OMP_NUM_THREADS is set before the engine
is imported, and the engine pins its threads per call).  Two 1-thread
processes beat one 2-thread process for xTB (376 atoms on 2 cores: 1.27 vs
1.61 s per gradient), so the default is nproc processes x 1 thread.

Failures: a fragment whose calculation raises is re-run (fresh calculator)
up to `retries` times; a worker that dies (process pool: its pipe closes;
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

from qr_phenix.engines import make_calculator
from qr_phenix.engines.base import EngineError, EngineSettings
from qr_phenix.threads import set_process_threads, thread_variables


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


def _forget_older_partitions(job_key):
    """Calculators of an evaluator's earlier partitions are never asked again
    (their fragments are gone): drop them, so memory and engine scratch
    directories (removed with their calculator) do not grow with rebuilds."""
    evaluator, generation = job_key[0], job_key[1]
    stale = [k for k in _CALCULATORS if k[0][0] == evaluator and k[0][1] < generation]
    for k in stale:
        del _CALCULATORS[k]


def _calculator(job, fresh=False):
    key = (job.key, tuple(job.symbols), job.settings.charge, job.settings.multiplicity)
    calc = None if fresh else _CALCULATORS.get(key)
    if calc is None:
        _forget_older_partitions(job.key)
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
    set_process_threads(job.settings.threads)
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
    what = error if isinstance(error, str) else "%s: %s" % (type(error).__name__, error)
    return "fragment %d (%d atoms): %s" % (job.key[-1] + 1, len(job.symbols), what)


class SerialExecutor:
    """In this process, one fragment after another."""

    name = "serial"
    nproc = 1

    def __init__(self, retries=2, threads_per_worker=1):
        self.threads = max(1, int(threads_per_worker))
        self.retries = retries
        self.n_retried = 0

    def run(self, jobs, on_done=None):
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
            if on_done is not None:
                on_done(len(out), len(jobs))
        return out

    def close(self):
        pass


def _worker_loop(conn, threads):
    """A pool worker: run (job, fresh) messages until None or the pipe closes."""
    set_process_threads(threads)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        job, fresh = message
        try:
            conn.send((True, run_job(job, fresh=fresh)))
        except Exception as e:
            conn.send((False, "%s: %s" % (type(e).__name__, e)))


class _Worker:
    def __init__(self, context, threads):
        import multiprocessing
        self.conn, child = multiprocessing.Pipe()
        self.process = context.Process(target=_worker_loop, args=(child, threads), daemon=True)
        self.process.start()
        child.close()
        self.job = None          # index of the job in flight

    def stop(self, kill=False):
        try:
            if kill:
                self.process.kill()
            else:
                self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


class ProcessPoolExecutor:
    """`nproc` worker processes on this machine (spawned, so no OpenMP state
    is inherited through fork).

    A fragment goes back to the worker that computed it before: its
    calculator lives there, and tblite restarts the SCC from the previous
    wavefunction (1va7, 126 fragments, GFN2: 17.5 s of engine time per
    gradient with every fragment restarting vs 20-22 s when fragments land
    on any worker).  New fragments are dealt largest first to the worker
    with the least work (longest-processing-time-first); a worker that runs
    out of its own fragments takes the smallest waiting one of the busiest
    worker, which then stays with it.
    """

    name = "process pool"

    def __init__(self, nproc=2, threads_per_worker=1, retries=2):
        import multiprocessing
        self.nproc = max(1, int(nproc))
        self.threads = max(1, int(threads_per_worker))
        self.retries = retries
        self.n_retried = 0
        self.n_pool_restarts = 0
        self.n_moved = 0
        self._context = multiprocessing.get_context("spawn")
        self._workers = [None] * self.nproc
        self._owner = {}       # job key -> worker index
        self._seconds = {}     # job key -> seconds of its last run

    def _worker(self, w):
        if self._workers[w] is None:
            self._workers[w] = _Worker(self._context, self.threads)
        return self._workers[w]

    def _cost(self, job):
        return self._seconds.get(job.key, 1e-4 * len(job.symbols) ** 2)

    def _deal(self, jobs):
        """Per-worker queues of job indices, each largest first."""
        queues = [[] for _ in range(self.nproc)]
        load = [0.0] * self.nproc
        new = []
        for k, job in enumerate(jobs):
            w = self._owner.get(job.key)
            if w is None or w >= self.nproc:
                new.append(k)
            else:
                queues[w].append(k)
                load[w] += self._cost(job)
        for k in sorted(new, key=lambda k: -self._cost(jobs[k])):
            w = min(range(self.nproc), key=lambda i: load[i])
            queues[w].append(k)
            load[w] += self._cost(jobs[k])
            self._owner[jobs[k].key] = w
        for q in queues:
            q.sort(key=lambda k: -self._cost(jobs[k]))
        return queues

    def _next_job(self, w, queues, jobs):
        if queues[w]:
            return queues[w].pop(0)
        busiest = max(range(self.nproc),
                      key=lambda i: sum(self._cost(jobs[k]) for k in queues[i]))
        if not queues[busiest]:
            return None
        k = queues[busiest].pop()        # its smallest: the owner keeps the big ones
        self._owner[jobs[k].key] = w
        self.n_moved += 1
        return k

    def run(self, jobs, on_done=None):
        from multiprocessing.connection import wait
        results = [None] * len(jobs)
        attempts = [0] * len(jobs)
        queues = self._deal(jobs)
        n_done = 0

        def dispatch(w):
            k = self._next_job(w, queues, jobs)
            if k is not None:
                worker = self._worker(w)
                worker.job = k
                worker.conn.send((jobs[k], attempts[k] > 0))

        def failed(w, k, why):
            attempts[k] += 1
            self.n_retried += 1
            if attempts[k] > self.retries:
                self._abort()
                raise EngineError("Fragment calculation failed %d times; last error: %s"
                                  % (attempts[k], _describe(jobs[k], why)))
            queues[w].insert(0, k)    # again, with a fresh calculator

        try:
            for w in range(self.nproc):
                dispatch(w)
            while n_done < len(jobs):
                busy = [w for w, x in enumerate(self._workers) if x is not None and
                        x.job is not None]
                waitables = {}
                for w in busy:
                    worker = self._workers[w]
                    waitables[worker.conn] = (w, worker)
                    waitables[worker.process.sentinel] = (w, worker)
                for ready in wait(list(waitables)):
                    w, worker = waitables[ready]
                    if self._workers[w] is not worker or worker.job is None:
                        continue      # its pipe and sentinel were both ready
                    k = worker.job
                    try:
                        ok, value = worker.conn.recv()
                    except (EOFError, OSError):
                        # the worker died (crash, out of memory, os._exit in a
                        # library): a new one takes its place and the fragment
                        # is re-run
                        worker.job = None
                        worker.stop(kill=True)
                        self._workers[w] = None
                        self.n_pool_restarts += 1
                        failed(w, k, "the worker process died (exit code %s)"
                               % worker.process.exitcode)
                        dispatch(w)
                        continue
                    worker.job = None
                    if ok:
                        results[k] = value
                        self._seconds[jobs[k].key] = value[2]
                        n_done += 1
                        if on_done is not None:
                            on_done(n_done, len(jobs))
                    else:
                        failed(w, k, value)
                    dispatch(w)
        except BaseException:
            self._abort()
            raise
        self._forget_old_keys(jobs)
        return results

    def _forget_old_keys(self, jobs):
        """Owners and timings of fragments of earlier partitions are dropped."""
        current = {j.key for j in jobs}
        if len(self._owner) > 4 * len(current):
            self._owner = {k: w for k, w in self._owner.items() if k in current}
            self._seconds = {k: t for k, t in self._seconds.items() if k in current}

    def _abort(self):
        """Workers with a job in flight are stopped (their answers would arrive
        in the next run); the others keep their calculators."""
        for w, worker in enumerate(self._workers):
            if worker is not None and worker.job is not None:
                worker.stop(kill=True)
                self._workers[w] = None

    def close(self):
        for w, worker in enumerate(self._workers):
            if worker is not None:
                worker.stop(kill=worker.job is not None)
                self._workers[w] = None


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
            env = thread_variables(self.threads)
            # one task per worker process; the engine threads come from env
            self._cluster = distributed.LocalCluster(
                n_workers=max(1, int(nproc)), threads_per_worker=1, processes=True,
                dashboard_address=None, env=env)
            self.client = distributed.Client(self._cluster)
        else:
            self.client = distributed.Client(scheduler)
        self.nproc = len(self.client.scheduler_info().get("workers", {})) or nproc

    def run(self, jobs, on_done=None):
        import distributed
        jobs = [replace(j, settings=replace(j.settings, threads=self.threads)) for j in jobs]
        # pure=False: the same positions must be recomputed after a failure;
        # retries covers exceptions, and the scheduler itself re-runs tasks of
        # a worker that died (up to distributed.scheduler.allowed-failures)
        # priority = size: large fragments start first, as in the process pool
        futures = [self.client.submit(run_job, j, pure=False, retries=self.retries,
                                      priority=len(j.symbols)) for j in jobs]
        try:
            if on_done is not None:
                for done, _ in enumerate(distributed.as_completed(futures), 1):
                    on_done(done, len(futures))
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

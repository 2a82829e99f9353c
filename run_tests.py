"""Run the qr_phenix test suite (what CI runs).

    .venv/bin/python run_tests.py            # default suite (< 15 min on 2 cores)
    .venv/bin/python run_tests.py --slow     # also the long checks
    .venv/bin/python run_tests.py -n 0       # in this process only (pytest-xdist's -n)

The tests run in one worker process per core (pytest-xdist, at most
MAX_WORKERS), a test file per worker at a time: the files' module fixtures
(a refinement, a fragmented gradient) then run once, not once per worker.
Without pytest-xdist they run in this process.

Tests are pytest files tests/tst_*.py; inside a libtbx/PHENIX install they
run the same way with libtbx.python run_tests.py.
"""

import importlib.util
import os
import sys

# the suite spends its time in single-threaded engines and cctbx; more workers
# than files of heavy tests would idle, and each holds a few hundred MB
MAX_WORKERS = 4

# engines read their thread settings at first import (see engines/tblite.py)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def worker_args(argv):
    """pytest-xdist's arguments: one worker per core, whole files per worker."""
    if importlib.util.find_spec("xdist") is None:
        return []
    if any(a == "-n" or a.startswith(("-n", "--numprocesses", "--dist")) for a in argv) \
            or "no:xdist" in argv:
        return []    # the caller chose
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = min(MAX_WORKERS, cores or 1)
    return ["-n", str(workers), "--dist", "loadfile"] if workers > 1 else []


def main(argv):
    import pytest
    here = os.path.dirname(os.path.abspath(__file__))
    args = [os.path.join(here, "tests"), "-ra", "-q", "-p", "no:cacheprovider"]
    if "--slow" in argv:
        argv = [a for a in argv if a != "--slow"]
    else:
        args += ["-m", "not slow"]
    code = pytest.main(args + worker_args(argv) + argv)
    if code == 5:
        print("run_tests.py: no tests were collected", file=sys.stderr)
        return 1
    return int(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Run the qr_phenix test suite (what CI runs).

    .venv/bin/python run_tests.py            # default suite (< 15 min on 2 cores)
    .venv/bin/python run_tests.py --slow     # also the long checks

Tests are pytest files tests/tst_*.py; inside a libtbx/PHENIX install they
run the same way with libtbx.python run_tests.py.
"""

import os
import sys

# engines read their thread settings at first import (see engines/tblite.py)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv):
    import pytest
    here = os.path.dirname(os.path.abspath(__file__))
    args = [os.path.join(here, "tests"), "-ra", "-q", "-p", "no:cacheprovider"]
    if "--slow" in argv:
        argv = [a for a in argv if a != "--slow"]
    else:
        args += ["-m", "not slow"]
    code = pytest.main(args + argv)
    if code == 5:
        print("run_tests.py: no tests were collected", file=sys.stderr)
        return 1
    return int(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

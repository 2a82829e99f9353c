"""Engine thread counts, given through the environment.

OpenMP, OpenBLAS and MKL read these variables once, when they are first
loaded: set them before an engine library is imported (in-process engines)
or in a subprocess's environment (engine programs, worker processes).  A
passive OpenMP wait policy keeps idle threads from spinning on cores that
other workers need.
"""

import os


def thread_variables(threads):
    """{variable: value} that give OpenMP and BLAS `threads` threads, with a
    passive OpenMP wait policy."""
    n = str(max(1, int(threads)))
    return {"OMP_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n, "MKL_NUM_THREADS": n,
            "OMP_WAIT_POLICY": "PASSIVE"}


def child_environment(threads):
    """os.environ for a subprocess, with the thread counts (a wait policy
    already set in os.environ wins)."""
    env = dict(os.environ)
    policy = env.get("OMP_WAIT_POLICY")
    env.update(thread_variables(threads))
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    return env


def set_process_threads(threads):
    """Default thread counts for this process (a variable already set wins);
    call before an engine library is first imported."""
    for name, value in thread_variables(threads).items():
        os.environ.setdefault(name, value)

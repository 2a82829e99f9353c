# LIBTBX_SET_DISPATCHER_NAME qr.benchmark
"""Command-line dispatcher for qr.benchmark (python -m qr_phenix.benchmark.helix_1us0)."""

import sys

from qr_phenix.command_line import run_program_cli
from qr_phenix.programs.benchmark import Program


def run(args=None):
    from qr_phenix.benchmark.helix_1us0 import cli_args
    args = sys.argv[1:] if args is None else args
    return run_program_cli(Program, cli_args(args))


if __name__ == "__main__":
    run()

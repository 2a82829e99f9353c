# LIBTBX_SET_DISPATCHER_NAME qr.refine
"""Command-line dispatcher for qr.refine (python -m qr_phenix.refine)."""

from qr_phenix.command_line import run_program_cli
from qr_phenix.programs.refine import Program


def run(args=None):
    return run_program_cli(Program, args)


if __name__ == "__main__":
    run()

# LIBTBX_SET_DISPATCHER_NAME qr.fragments_check
"""Command-line dispatcher for qr.fragments_check (python -m qr_phenix.fragments_check)."""

from qr_phenix.command_line import run_program_cli
from qr_phenix.programs.fragments_check import Program


def run(args=None):
    return run_program_cli(Program, args)


if __name__ == "__main__":
    run()

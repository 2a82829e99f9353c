# LIBTBX_SET_DISPATCHER_NAME qr.prepare
"""Command-line dispatcher for qr.prepare (python -m qr_phenix.prepare)."""

from qr_phenix.command_line import run_program_cli
from qr_phenix.programs.prepare import Program


def run(args=None):
    return run_program_cli(Program, args)


if __name__ == "__main__":
    run()

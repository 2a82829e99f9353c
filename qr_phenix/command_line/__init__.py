"""Command-line dispatchers (libtbx makes `qr.<name>` commands from these)."""

import sys


def run_program_cli(program_class, args=None):
    """run_program with user errors as one line, as PHENIX dispatchers do.

    A `Sorry` (bad input, engine failure after retries) prints
    "Sorry: <message>" and exits with status 1; Ctrl-C exits with 130.
    Anything else is a bug and keeps its traceback.
    """
    from iotbx.cli_parser import run_program
    from libtbx.utils import Sorry
    try:
        return run_program(program_class=program_class, args=args)
    except Sorry as e:
        print("Sorry: %s" % e, file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        sys.exit(130)

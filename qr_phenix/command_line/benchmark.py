# LIBTBX_SET_DISPATCHER_NAME qr.benchmark
"""Command-line dispatcher for qr.benchmark (python -m qr_phenix.benchmark.helix_1us0)."""

import sys

from qr_phenix.command_line import run_program_cli
from qr_phenix.programs.benchmark import Program


def cli_args(argv):
    """Our command line -> PHIL arguments: the first bare word is output_dir,
    comma lists become PHIL lists."""
    out = []
    for a in argv:
        if "=" not in a and not a.startswith("-") and not a.endswith((".eff", ".phil")):
            a = "output_dir=%s" % a
        elif "=" in a:
            k, v = a.split("=", 1)
            if k.split(".")[-1] in ("methods", "doses", "refine_args"):
                v = " ".join(x for x in v.replace(",", " ").split())
                if k.split(".")[-1] == "refine_args":
                    v = " ".join('"%s"' % x for x in v.split())
            a = "%s=%s" % (k, v)
        out.append(a)
    return out


def run(args=None):
    args = sys.argv[1:] if args is None else args
    return run_program_cli(Program, cli_args(args))


if __name__ == "__main__":
    run()

"""Command-line dispatchers (libtbx makes `qr.<name>` commands from these)."""

import os
import sys


#: file types any_file recognises by content, not by accident
_RECOGNISED = ("model", "miller_array", "real_map", "restraint")


def check_input_files(args, datatypes):
    """Refuse files that are not of a type the program reads.

    cctbx's parser lists such files as "not used by program" and carries on,
    which would e.g. turn an X-ray run with a damaged MTZ into a geometry-only
    run; a user deserves an error naming the file instead.
    """
    from iotbx.data_manager import data_manager_type
    from iotbx.file_reader import any_file
    from libtbx.utils import Sorry
    for arg in args:
        if "=" in arg or arg.startswith("-") or not os.path.isfile(arg):
            continue
        try:
            kind = any_file(arg).file_type
        except Exception:
            kind = None
        datatype = data_manager_type.get(kind)
        # (any text file passes as a "sequence": that one stays "Cannot read")
        if datatype in _RECOGNISED and datatype not in datatypes:
            raise Sorry("%s is a %s file, which this program does not read (it reads: %s)."
                        % (arg, datatype.replace("_", " "), ", ".join(
                            d.replace("_", " ") for d in datatypes)))
        if datatype not in datatypes:
            raise Sorry("Cannot read %s: it is not a model (PDB/mmCIF), reflection"
                        " (MTZ/CIF), map (CCP4/MRC) or parameter file, or it is damaged."
                        % arg)


def run_checked(program_class, args, logger=None):
    """run_program after checking that every file argument is readable."""
    from iotbx.cli_parser import run_program
    args = list(sys.argv[1:] if args is None else args)
    check_input_files(args, program_class.datatypes)
    return run_program(program_class=program_class, args=args, logger=logger)


def run_program_cli(program_class, args=None):
    """run_checked with user errors as one line, as PHENIX dispatchers do.

    A `Sorry` (bad input, engine failure after retries) prints
    "Sorry: <message>" and exits with status 1; Ctrl-C exits with 130.
    Anything else is a bug and keeps its traceback.
    """
    from libtbx.utils import Sorry
    try:
        return run_checked(program_class, args)
    except Sorry as e:
        print("Sorry: %s" % e, file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        sys.exit(130)

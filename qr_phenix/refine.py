"""`python -m qr_phenix.refine model data [key=value ...]` (see qr.refine)."""

from qr_phenix.command_line.refine import run

if __name__ == "__main__":
    run()

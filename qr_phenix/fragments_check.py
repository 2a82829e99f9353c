"""`python -m qr_phenix.fragments_check model.pdb [key=value ...]` (see qr.fragments_check)."""

from qr_phenix.command_line.fragments_check import run

if __name__ == "__main__":
    run()

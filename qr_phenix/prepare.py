"""python -m qr_phenix.prepare model.pdb: see qr_phenix.programs.prepare."""

from qr_phenix.command_line.prepare import run

if __name__ == "__main__":
    run()

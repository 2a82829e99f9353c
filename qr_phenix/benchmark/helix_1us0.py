"""`python -m qr_phenix.benchmark.helix_1us0 out_dir [key=value ...]` (see qr.benchmark;
the study itself is qr_phenix/benchmark/study.py)."""

from qr_phenix.command_line.benchmark import run

if __name__ == "__main__":
    run()

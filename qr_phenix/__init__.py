"""qr_phenix: quantum-chemical restraints for refinement in cctbx/PHENIX."""

__version__ = "0.1.0"

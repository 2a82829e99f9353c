"""Model preparation for QM: complete residues, hydrogens, charges.

polymer.py  protein/nucleic acid/water via PDBFixer (OpenMM)
ligands.py  other residues via the CCD (biotite) and hydride
model.py    altlocs, merge, report: prepare_hierarchy / prepare_file
"""

from qr_phenix.preparation.model import (  # noqa: F401
    PreparationReport, prepare_file, prepare_hierarchy)

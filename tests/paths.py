"""Where test data live: the 1us0 helix files ship in tests/data/helix (the
published study's reference, its H-free variant and the simulated data);
the real entries and the full 1us0 entry come from ../shared beside the
checkout, and tests that need them skip, naming the missing file."""

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
TEST_DATA = TESTS / "data"
HELIX_DIR = TEST_DATA / "helix"
HELIX_PDB = HELIX_DIR / "a87_99_h.pdb"          # 94 atoms, all H, P1 box, B=80
HELIX_NO_HA_PDB = HELIX_DIR / "a87_99.pdb"       # amide H only
PEPTIDE_H_PDB = TEST_DATA / "1us0_A30_34_h.pdb"   # AVKVA, all H (qr.prepare), 40 A P1 box
HELIX_MTZ = HELIX_DIR / "data.mtz"               # 6-4 A, 5 % noise, 10 % free

SHARED = TESTS.parent.parent / "shared"
ENTRY_1US0 = SHARED / "data" / "1us0" / "1us0.pdb"
ENTRIES = SHARED / "data" / "entries"


def shared(path):
    """The path, or skip the test naming it (CI keeps ../shared beside the checkout)."""
    path = Path(path)
    if not path.exists():
        pytest.skip("shared data missing: %s (../shared beside the checkout)" % path)
    return str(path)

"""Shared fixtures: the 1us0 helix files in ../shared and small model edits."""

import os
from pathlib import Path

# tblite must see its thread settings before it is first imported, and
# qr_phenix loads the fast BLAS only when imported before cctbx
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import qr_phenix  # noqa: E402,F401

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
HELIX_DIR = SHARED / "data" / "1us0"


def shared_file(name):
    path = HELIX_DIR / name
    if not path.exists():
        pytest.skip("shared test data missing: %s (CI keeps ../shared beside the checkout)"
                    % path)
    return str(path)


@pytest.fixture(scope="session")
def helix_pdb():
    """The 94-atom reference helix with all hydrogens (a87_99_h.pdb)."""
    return shared_file("a87_99_h.pdb")


@pytest.fixture(scope="session")
def helix_mtz():
    return shared_file("data.mtz")


@pytest.fixture(scope="session")
def helix_no_ha_pdb():
    """The helix without HA and terminal hydrogens (a87_99.pdb)."""
    return shared_file("a87_99.pdb")

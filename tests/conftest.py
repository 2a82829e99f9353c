"""Shared fixtures: the 1us0 helix files (tests/data/helix)."""

import os

# tblite must see its thread settings before it is first imported, and
# qr_phenix loads the fast BLAS only when imported before cctbx
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import qr_phenix  # noqa: E402,F401

import pytest

from paths import HELIX_MTZ, HELIX_NO_HA_PDB, HELIX_PDB  # noqa: E402


@pytest.fixture(scope="session")
def helix_pdb():
    """The 94-atom reference helix with all hydrogens (a87_99_h.pdb)."""
    return str(HELIX_PDB)


@pytest.fixture(scope="session")
def helix_mtz():
    return str(HELIX_MTZ)


@pytest.fixture(scope="session")
def helix_no_ha_pdb():
    """The helix without HA and terminal hydrogens (a87_99.pdb)."""
    return str(HELIX_NO_HA_PDB)


@pytest.fixture(scope="module")
def library():
    """The CCP4 monomer library qr_phenix serves to mmtbx (installed if needed)."""
    from libtbx.utils import Sorry
    from qr_phenix import monomer_library as ml
    try:
        return ml.activate_library()
    except Sorry as e:
        pytest.skip("no monomer library (%s)" % str(e).splitlines()[0])

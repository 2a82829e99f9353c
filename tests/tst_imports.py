"""Importing qr_phenix modules in any order must not crash the interpreter."""

import subprocess
import sys


def test_scipy_before_cctbx_does_not_crash():
    # scipy.spatial imported before cctbx's Boost.Python extensions segfaulted
    code = "import qr_phenix.qm_region; import iotbx.pdb; print('ok')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-500:]


def test_importing_openmm_first_is_explained_before_the_crash():
    # openmm before cctbx's Boost.Python segfaults (two libstdc++ copies); the
    # user must at least read why and what to do.
    code = "import openmm; import qr_phenix; print('ok')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "openmm was imported before qr_phenix" in r.stderr, r.stderr[-500:]
    assert "Import qr_phenix first" in r.stderr
    assert r.returncode == 0 or r.returncode < 0, r.stderr[-500:]


def test_importing_qr_phenix_first_says_nothing():
    code = "import qr_phenix; import openmm; import scipy.linalg; import iotbx.pdb; print('ok')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-500:]
    assert "imported before qr_phenix" not in r.stderr


def test_cctbx_loaded_before_scipy_and_openmm_says_nothing():
    # Boost.Python already loaded: the later scipy/openmm imports are harmless.
    code = "import iotbx.pdb; import scipy.linalg; import openmm; import qr_phenix; print('ok')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-500:]
    assert "imported before qr_phenix" not in r.stderr

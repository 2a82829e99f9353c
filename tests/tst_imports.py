"""Importing qr_phenix modules in any order must not crash the interpreter."""

import subprocess
import sys


def test_scipy_before_cctbx_does_not_crash():
    # scipy.spatial imported before cctbx's Boost.Python extensions segfaulted
    code = "import qr_phenix.qm_region; import iotbx.pdb; print('ok')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-500:]

"""qr_phenix: quantum-chemical restraints for refinement in cctbx/PHENIX."""

__version__ = "0.1.0"

# Debian's OpenBLAS, loaded globally before anything else, makes tblite's
# BLAS calls 2.7x (94 atoms) to 4x (376 atoms) faster with identical energies
# (qr_phenix/engines/tblite.py).  Loaded later, after cctbx and an X-ray
# refinement had run in the same process, it crashed tblite (segfault in its
# error handler), so it is loaded here, at the first import of qr_phenix, or
# not at all.  QR_PHENIX_TBLITE_BLAS=none disables it, =/path/lib.so picks
# another library.
OPENBLAS = None
OPENBLAS_STATUS = "not loaded"


def _preload_openblas():
    global OPENBLAS, OPENBLAS_STATUS
    import ctypes
    import os
    import sys
    choice = os.environ.get("QR_PHENIX_TBLITE_BLAS", "")
    if choice.lower() == "none":
        OPENBLAS_STATUS = "disabled by QR_PHENIX_TBLITE_BLAS=none"
        return
    early = [m for m in ("cctbx", "scitbx", "mmtbx", "tblite") if m in sys.modules]
    if early:
        OPENBLAS_STATUS = ("not loaded: qr_phenix was imported after %s (import qr_phenix"
                           " first for the faster BLAS)" % ", ".join(early))
        return
    for path in ([choice] if choice else ["libopenblas.so.0",
                                          "/lib/x86_64-linux-gnu/libopenblas.so.0"]):
        try:
            OPENBLAS = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        OPENBLAS_STATUS = "preloaded %s" % path
        return
    OPENBLAS_STATUS = "no system OpenBLAS found"


_preload_openblas()

# cctbx's Boost.Python extensions segfault at import when scipy.spatial was
# imported first (cctbx-base 2025.11, scipy 1.x wheels: `import scipy.spatial;
# import iotbx.pdb` crashes).  Loading Boost.Python here, before any qr_phenix
# module imports scipy, makes every import order safe.
import boost_adaptbx.boost.python  # noqa: E402,F401

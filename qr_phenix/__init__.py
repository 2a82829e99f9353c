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

# cctbx's Boost.Python extensions segfault at import when scipy.linalg (also
# through scipy.spatial or ase.io) or openmm (also through pdbfixer) was
# imported first: the cctbx-base wheel brings its own libstdc++, and the first
# iostream call of boost_python_meta_ext then crashes in a locale facet of the
# system libstdc++ those modules loaded (cctbx-base 2025.11, scipy 1.x and
# openmm 8 wheels).  Loading Boost.Python here, before any qr_phenix module
# imports them, makes every order of qr_phenix's own imports safe.  A program
# that imported one of them before qr_phenix is told why it is about to crash.
CRASHES_BOOST_PYTHON_IF_FIRST = ("scipy.linalg", "openmm")


def _warn_if_boost_python_will_crash():
    import sys
    if "boost_python_meta_ext" in sys.modules:
        return
    early = [m for m in CRASHES_BOOST_PYTHON_IF_FIRST if m in sys.modules]
    if early:
        sys.stderr.write(
            "qr_phenix: %s was imported before qr_phenix (or cctbx); cctbx's Boost.Python"
            " extensions may now crash the interpreter (segmentation fault). Import"
            " qr_phenix first.\n" % " and ".join(early))
        sys.stderr.flush()


_warn_if_boost_python_will_crash()
import boost_adaptbx.boost.python  # noqa: E402,F401

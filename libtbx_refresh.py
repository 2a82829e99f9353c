"""libtbx configure hook: runs when a cctbx/PHENIX source install configures
or refreshes with qr_phenix under modules/.

libtbx itself makes the `qr.*` commands from qr_phenix/command_line/*.py
(`# LIBTBX_SET_DISPATCHER_NAME`).  Here we only check the Python packages that
a PHENIX/cctbx Python does not ship and say how to add them; nothing is
installed behind the user's back.
"""

import importlib.util

missing = [name for name in ("ase", "tblite") if importlib.util.find_spec(name) is None]
if missing:
    print("  qr_phenix: optional packages missing: %s. Install them into this Python:\n"
          "    libtbx.python -m pip install %s\n"
          "  (tblite gives the default GFN2-xTB engine; other engines: see README)"
          % (", ".join(missing), " ".join(missing)))

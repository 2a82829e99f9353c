"""python -m qr_phenix.monomer_library: install the CCP4 monomer library (install.py)."""

import sys

from qr_phenix.monomer_library.install import main

sys.exit(main())

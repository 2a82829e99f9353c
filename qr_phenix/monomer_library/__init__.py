"""Monomer library for mmtbx: find it, install it, and make hydrogenated
proteins process with it.

cctbx-base from PyPI ships no monomer library. PHENIX's ``chem_data`` is used
when mmtbx finds it. Otherwise we use the CCP4 (acedrg) library, taken from the
``coot-headless-api`` wheel at set-up time (only its ``monomers/`` folder is
extracted; coot itself is never imported).

The CCP4 library does not work with mmtbx for hydrogenated proteins as is
(mmtbx's pdb_interpretation, cctbx-base 2025.11):

* mmtbx maps PDB-v3 CH2 hydrogen names onto old mon_lib names (GLY HA2/HA3 ->
  HA1/HA2), the acedrg dictionaries use HA2/HA3, so every CH2 group clashes;
* mmtbx looks up Phenix-only mods (NH1NOTPRO, NH2NOTPRO, COOH, ACID-ASP,
  ACID-GLU, CF-COH, CF-CBH) that the CCP4 list lacks, and the CCP4 NH1/NH2
  mods (used by mmtbx only for N-terminal PRO) add atoms the CCP4 PRO already
  has;
* acedrg gives ``value_dist_nucleus`` but mmtbx reads ``value_dist_neutron``.

Choice: a global **overlay** library. ``build_overlay()`` writes a folder of
symlinks to the source library plus patched copies of ``list/mon_lib_list.cif``
and of the amino-acid dictionaries (renamed CH2 hydrogens, PRO without H2, a
``value_dist_neutron`` column), and ``activate_library()`` points
``MMTBX_CCP4_MONOMER_LIB`` at it (``find_library()`` only finds). Every mmtbx tool, including those that
re-process the model internally and ignore restraint objects (clashscore2,
reduce2), then works without extra arguments. Caveat: tools that *write*
dictionary names (reduce2) write old-style names (HA1/HA2), which mmtbx reads
back fine. The overlay is built with the library at set-up time and rebuilt
automatically (about 1 s) when this module's patch version changes.

``restraint_objects_for()`` builds the same patches as in-memory CIF objects
for ``mmtbx.model.manager(restraint_objects=...)``. It only returns what the
active library lacks, so with the overlay it is usually empty; it is the
fallback for libraries we cannot overlay and supplies neutron distances for
ligand dictionaries of large external libraries (only the amino acids are
neutron-patched there, to keep the overlay build fast).

Cache folder: ``$QR_PHENIX_DATA/monomers`` if QR_PHENIX_DATA is set, else
``<repo root>/qr_phenix_data/monomers`` in a source checkout, else
``~/.cache/qr_phenix/monomers``. It holds ``ccp4/`` (the extracted library)
and ``overlay/`` (what mmtbx reads).

Set-up: ``python -m qr_phenix.monomer_library [--wheel PATH] [--dest DIR]``.

Modules, one job each: cif_patches.py (the patches), library.py (finding,
caching and activating the library, the overlay), processing.py (models
processed with it), install.py (the set-up command).
"""

from qr_phenix.monomer_library.cif_patches import (  # noqa: F401
    aa_renames, block_text, model_text, mods_cif_model, patch_comp_model, patch_list_text)
from qr_phenix.monomer_library.library import (  # noqa: F401
    ENV_CLIBD, ENV_DATA, ENV_LIB, EXTRACT_STAMP, INSTALL_COMMAND, OVERLAY_STAMP,
    OVERLAY_VERSION, WHEEL_MONOMER_DIR, WHEEL_PACKAGE, activate_library, build_overlay,
    cache_dir, comp_file, ensure_overlay, extract_from_wheel, find_library, is_library,
    monomer_server, needs_patch, overlay_is_current, repo_root)
from qr_phenix.monomer_library.processing import (  # noqa: F401
    library_bond_pairs, library_bonds, library_manager, process_model, restraint_objects_for)

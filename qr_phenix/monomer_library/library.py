"""Where the monomer library is: mmtbx's own search, else the copy extracted
at set-up time; a plain CCP4 library gets its patched overlay, built once
(under a file lock, so parallel workers do not race) and cached.

find_library() only finds (and builds an overlay); activate_library() also
points MMTBX_CCP4_MONOMER_LIB at it, the one place that changes the
environment, so that every mmtbx tool in this process and its subprocesses
reads the patched library.
"""

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
import zipfile
from pathlib import Path

from libtbx.utils import Sorry

from qr_phenix.monomer_library.cif_patches import (
    PATCHED_MOD_IDS, model_text, patch_comp_model, patch_list_text, wants_neutron_column)
from qr_phenix.residue_names import STANDARD_AMINO_ACIDS

WHEEL_PACKAGE = "coot-headless-api"
WHEEL_MONOMER_DIR = "coot_headless_api/share/coot/lib/data/monomers/"
ENV_LIB = "MMTBX_CCP4_MONOMER_LIB"
ENV_CLIBD = "CLIBD_MON"
ENV_DATA = "QR_PHENIX_DATA"
INSTALL_COMMAND = "python -m qr_phenix.monomer_library"

# Bump when cif_patches.py changes what it writes: existing overlays are then rebuilt.
OVERLAY_VERSION = 4
OVERLAY_STAMP = ".qr_phenix_overlay.json"
EXTRACT_STAMP = ".qr_phenix_source.json"
# Above this many dictionaries only the amino acids get the neutron column
# (a full CCP4 library has ~40000 files); the rest is done at run time.
NEUTRON_ALL_LIMIT = 5000

_lock = threading.RLock()
_active = {}            # environment key -> library path found for it
_needs_patch_cache = {}
_servers = {}           # library -> mmtbx monomer server


def _say(log, text):
    if log is not None:
        print(text, file=log)


# --- library files -----------------------------------------------------------

def is_library(path):
    """True if path holds list/mon_lib_list.cif and ener_lib.cif."""
    if not path:
        return False
    path = Path(path)
    return ((path / "list" / "mon_lib_list.cif").is_file()
            and (path / "ener_lib.cif").is_file())


def needs_patch(path):
    """True if the library lacks the Phenix-only mods (a plain CCP4 library)."""
    list_file = Path(path) / "list" / "mon_lib_list.cif"
    key = (str(list_file), list_file.stat().st_mtime_ns)
    if key not in _needs_patch_cache:
        _needs_patch_cache[key] = b"data_mod_NH1NOTPRO" not in \
            list_file.read_bytes()
    return _needs_patch_cache[key]


def comp_file(library, comp_id):
    """Path of comp_id's dictionary in a CCP4-layout library, or None."""
    from libtbx.utils import windows_device_names
    comp_id = comp_id.strip().upper()
    if not comp_id:
        return None
    folder = Path(library) / comp_id[0].lower()
    names = [comp_id + ".cif"]
    if comp_id in windows_device_names:
        names.insert(0, "%s_%s.cif" % (comp_id, comp_id))
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return None


def repo_root():
    """The source checkout holding this package, or None when installed."""
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "qr_phenix").is_dir():
        return root
    return None


def cache_dir():
    """Where the extracted library and the overlay live (see module doc)."""
    if os.environ.get(ENV_DATA):
        return Path(os.environ[ENV_DATA]).expanduser() / "monomers"
    root = repo_root()
    if root is not None:
        return root / "qr_phenix_data" / "monomers"
    return Path.home() / ".cache" / "qr_phenix" / "monomers"


def _replace_dir(tmp, dest):
    # Swap a finished folder into place; a concurrent builder may win.
    dest = Path(dest)
    old = None
    if dest.exists() or dest.is_symlink():
        old = dest.with_name(".%s.old-%d" % (dest.name, os.getpid()))
        os.rename(dest, old)
    try:
        os.rename(tmp, dest)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not dest.exists():
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _make_tmp_dir(dest):
    # Built next to dest and renamed into place; readable like a normal dir.
    tmp = Path(tempfile.mkdtemp(prefix=".%s.tmp-" % dest.name,
                                dir=dest.parent))
    os.chmod(tmp, 0o755)
    return tmp


def extract_from_wheel(wheel_path, dest):
    """Extract only the monomer library from a coot-headless-api wheel so that
    dest/list/mon_lib_list.cif exists. Returns dest as a Path."""
    wheel_path = Path(wheel_path)
    dest = Path(dest)
    try:
        wheel = zipfile.ZipFile(wheel_path)
    except (OSError, zipfile.BadZipFile) as e:
        raise Sorry("Cannot read wheel %s: %s" % (wheel_path, e))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _make_tmp_dir(dest)
    n_files = 0
    with wheel:
        for info in wheel.infolist():
            if not info.filename.startswith(WHEEL_MONOMER_DIR):
                continue
            relative = info.filename[len(WHEEL_MONOMER_DIR):]
            parts = Path(relative).parts
            if not relative or info.is_dir():
                continue
            if ".." in parts or Path(relative).is_absolute():
                raise Sorry("Unsafe path in wheel %s: %s" % (
                    wheel_path, info.filename))
            target = tmp.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with wheel.open(info) as source, open(target, "wb") as out:
                shutil.copyfileobj(source, out)
            n_files += 1
    if not is_library(tmp):
        shutil.rmtree(tmp, ignore_errors=True)
        raise Sorry("Wheel %s has no monomer library under %s" % (
            wheel_path, WHEEL_MONOMER_DIR))
    (tmp / EXTRACT_STAMP).write_text(json.dumps(
        {"wheel": wheel_path.name, "files": n_files}, indent=1) + "\n")
    _replace_dir(tmp, dest)
    return dest


def _overlay_stamp(source):
    return {"version": OVERLAY_VERSION, "source": str(Path(source).resolve())}


def _overlay_source(path):
    # The source library of a qr_phenix overlay, None for anything else.
    if path is None:
        return None
    try:
        stamp = json.loads((Path(path) / OVERLAY_STAMP).read_text())
    except (OSError, ValueError):
        return None
    source = Path(stamp.get("source", ""))
    return source if is_library(source) else None


def overlay_is_current(source, overlay):
    try:
        stamp = json.loads((Path(overlay) / OVERLAY_STAMP).read_text())
    except (OSError, ValueError):
        return False
    return stamp == _overlay_stamp(source) and is_library(overlay)


def _patch_comp_file(source_file, target_file, neutron):
    import iotbx.cif
    model = iotbx.cif.reader(file_path=str(source_file), strict=False).model()
    if patch_comp_model(model, neutron=neutron):
        target_file.write_text(model_text(model))
        return True
    return False


def build_overlay(source, dest, log=None):
    """Write the patched overlay of library `source` to `dest` (see module
    doc). Unchanged files are symlinks. Returns dest as a Path."""
    import iotbx.cif
    source = Path(source).resolve()
    dest = Path(dest)
    if not is_library(source):
        raise Sorry("Not a monomer library: %s" % source)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _make_tmp_dir(dest)
    try:
        cif_files = [p for p in source.glob("*/*.cif")]
        neutron_all = len(cif_files) <= NEUTRON_ALL_LIMIT
        patched_folders = {"list"} | {aa[0].lower() for aa in STANDARD_AMINO_ACIDS}
        if neutron_all:
            patched_folders |= {p.parent.name for p in cif_files}
        aa_files = {comp_file(source, aa) for aa in STANDARD_AMINO_ACIDS} - {None}
        n_patched = 0
        for entry in sorted(source.iterdir()):
            if entry.name in (OVERLAY_STAMP, EXTRACT_STAMP):
                continue
            if not (entry.is_dir() and entry.name in patched_folders):
                os.symlink(entry, tmp / entry.name)
                continue
            (tmp / entry.name).mkdir()
            for item in sorted(entry.iterdir()):
                target = tmp / entry.name / item.name
                if entry.name == "list" and item.name == "mon_lib_list.cif":
                    text = patch_list_text(item.read_text())
                    _check_list_text(text, item)
                    target.write_text(text)
                    n_patched += 1
                    continue
                if item.suffix == ".cif" and (item in aa_files or (
                        neutron_all and wants_neutron_column(item))):
                    if _patch_comp_file(item, target, neutron=True):
                        n_patched += 1
                        continue
                os.symlink(item, target)
        (tmp / OVERLAY_STAMP).write_text(
            json.dumps(_overlay_stamp(source), indent=1) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _replace_dir(tmp, dest)
    _say(log, "qr_phenix: monomer library overlay %s (%d patched files, "
              "source %s)" % (dest, n_patched, source))
    return dest


def _check_list_text(text, source):
    # The patched list must parse and define every mod mmtbx asks for.
    import iotbx.cif
    try:
        model = iotbx.cif.reader(input_string=text, strict=False).model()
        ids = set(model["mod_list"].get_loop("_chem_mod")["_chem_mod.id"])
    except Exception as e:
        raise Sorry("Patched %s does not parse: %s" % (source, e))
    missing = [mod_id for mod_id in PATCHED_MOD_IDS
               if mod_id not in ids or "mod_" + mod_id not in model]
    if missing:
        raise Sorry("Patched %s lacks mods %s" % (source, ", ".join(missing)))


def ensure_overlay(source, log=None):
    """The current overlay for `source`, built if missing or stale."""
    source = Path(source).resolve()
    base = cache_dir()
    if source == (base / "ccp4").resolve():
        overlay = base / "overlay"
    else:
        digest = hashlib.sha1(str(source).encode()).hexdigest()[:10]
        overlay = base / ("overlay-" + digest)
    with _lock:
        if not overlay_is_current(source, overlay):
            with _build_lock(base):
                if not overlay_is_current(source, overlay):
                    build_overlay(source, overlay, log=log)
    return overlay


@contextlib.contextmanager
def _build_lock(folder):
    # Serialises builds across processes (e.g. parallel workers' first use).
    import fcntl
    Path(folder).mkdir(parents=True, exist_ok=True)
    with open(Path(folder) / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _found_by_mmtbx():
    # mmtbx's own search order, without its hard failure when nothing is found.
    from mmtbx.monomer_library import server
    list_file = server.find_mon_lib_file(
        relative_path_components=["list", "mon_lib_list.cif"])
    if list_file is None:
        return None
    root = Path(list_file).parent.parent
    ener_lib = server.find_mon_lib_file(
        relative_path_components=["ener_lib.cif"])
    return root if ener_lib is not None else None


def _environment_key():
    return (os.environ.get(ENV_LIB), os.environ.get(ENV_CLIBD), os.environ.get(ENV_DATA))


def find_library(log=None):
    """The monomer library directory for mmtbx, made usable; the environment
    is left as it is (activate_library() points mmtbx at it).

    Order: what mmtbx finds by itself (PHENIX chem_data,
    $MMTBX_CCP4_MONOMER_LIB, $CLIBD_MON), then the copy extracted into
    cache_dir() at set-up time. A plain CCP4 library is replaced by its
    patched overlay, built when missing or stale. Raises Sorry naming the
    set-up command if there is no library.
    """
    key = _environment_key()
    with _lock:
        cached = _active.get(key)
        if cached is not None and is_library(cached):
            return cached
        found = _found_by_mmtbx()
        stamp_source = _overlay_source(found)
        if stamp_source is not None:
            # one of our overlays (e.g. inherited MMTBX_CCP4_MONOMER_LIB)
            found = stamp_source
        if found is not None and not needs_patch(found):
            result = str(found)
        else:
            source = found
            if source is None:
                source = cache_dir() / "ccp4"
                if not is_library(source):
                    raise Sorry(
                        "No monomer library found: mmtbx found none (PHENIX "
                        "chem_data, $%s, $%s) and %s does not exist.\n"
                        "  Fix: run `%s` once (it downloads the %s wheel "
                        "and extracts its monomer library), or set $%s to a "
                        "CCP4 monomer library." % (
                            ENV_LIB, ENV_CLIBD, source, INSTALL_COMMAND,
                            WHEEL_PACKAGE, ENV_LIB))
            result = str(ensure_overlay(source, log=log))
        _active[key] = result
        return result


def activate_library(log=None):
    """find_library(), made the library mmtbx reads: an overlay is set as
    $MMTBX_CCP4_MONOMER_LIB for this process and its subprocesses, since
    mmtbx tools that re-process a model themselves (clashscore2, reduce2)
    read only that."""
    with _lock:
        result = find_library(log=log)
        if _overlay_source(result) is not None and os.environ.get(ENV_LIB) != result:
            os.environ[ENV_LIB] = result
            _active[_environment_key()] = result
        return result


def monomer_server():
    """A mmtbx.monomer_library.server.server for the active library, shared
    per library (building one parses the whole list file, ~0.5 s)."""
    from mmtbx.monomer_library import server
    library = activate_library()
    with _lock:
        if library not in _servers:
            _servers[library] = server.server()
        return _servers[library]



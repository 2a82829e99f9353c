#!/usr/bin/env bash
# Set up qr_phenix on a fresh Debian 12 machine (run as root, Python 3.11).
# Idempotent: each step is skipped when already done, so re-runs are fast.
#   scripts/bootstrap.sh            # from any directory
# Offline monomer library: QR_PHENIX_COOT_WHEEL=/path/to/coot_headless_api-*.whl
set -euo pipefail

say() { echo "bootstrap: $*"; }
die() { echo "bootstrap: error: $*" >&2; exit 1; }

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." || die "cannot cd to repo root"
[ -f pyproject.toml ] || die "no pyproject.toml in $(pwd)"
say "repo $(pwd)"

# 1. system packages: QM engines (MOPAC, xtb) and OpenBLAS for tblite
packages=(mopac xtb libopenblas0)
python3 -c "import ensurepip" 2>/dev/null || packages+=(python3-venv)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    say "apt: ${packages[*]} already installed"
else
    command -v apt-get >/dev/null || die "apt-get not found; install ${missing[*]} by hand"
    say "apt: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
fi

# 2. virtual environment
if [ ! -x .venv/bin/python ]; then
    say "creating .venv"
    python3 -m venv .venv || die "python3 -m venv failed"
else
    say ".venv exists"
fi
py=.venv/bin/python

# 3. the package and its extras; the stamp records which pyproject.toml was installed
stamp=.venv/.qr_phenix_pyproject.sha256
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
have=$(cat "$stamp" 2>/dev/null || true)
if [ "$want" = "$have" ] && "$py" -c "import qr_phenix, cctbx, tblite" 2>/dev/null; then
    say "pip: qr_phenix[all] up to date"
else
    say "pip: installing -e '.[all]' (a few minutes the first time)"
    "$py" -m pip install -q --upgrade pip || die "pip upgrade failed"
    "$py" -m pip install -q -e '.[all]' || die "pip install -e '.[all]' failed"
    "$py" -c "import qr_phenix, cctbx, tblite" || die "imports fail after pip install"
    echo "$want" > "$stamp"
fi

# 4. CCP4 monomer library for mmtbx (extracted from the coot-headless-api wheel)
if "$py" -c "
import sys
from qr_phenix import monomer_library as ml
raw = ml.cache_dir() / 'ccp4'
sys.exit(0 if ml.is_library(raw) and ml.overlay_is_current(raw, ml.cache_dir() / 'overlay') else 1)
" 2>/dev/null; then
    say "monomer library already installed"
else
    args=()
    if [ -n "${QR_PHENIX_COOT_WHEEL:-}" ]; then
        args=(--wheel "$QR_PHENIX_COOT_WHEEL")
    fi
    say "monomer library: python -m qr_phenix.monomer_library ${args[*]}"
    "$py" -m qr_phenix.monomer_library "${args[@]}" || die "monomer library install failed"
fi

say "done; tests: $py run_tests.py; example: $py -m qr_phenix.example"

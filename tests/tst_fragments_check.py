"""qr.fragments_check: fragment vs whole-model GFN2 gradients on the 94-atom helix."""

import qr_phenix  # noqa: E402,F401  (first, before cctbx)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("iotbx.pdb", reason="requires cctbx (iotbx)")
pytest.importorskip("tblite", reason="requires tblite (GFN2-xTB engine)")

from iotbx.cli_parser import run_program  # noqa: E402
from libtbx.utils import Sorry, null_out  # noqa: E402

from qr_phenix.fragmentation.check import parse_sizes  # noqa: E402
from qr_phenix.programs.fragments_check import Program  # noqa: E402

from paths import HELIX_PDB  # noqa: E402


def _helix():
    return str(HELIX_PDB)


def test_parse_sizes():
    assert parse_sizes("20:3, 30:4.5") == [(20, 3.0), (30, 4.5)]
    for bad in ("", "30", "30:x", "0:4", "30:-1"):
        with pytest.raises(Sorry):
            parse_sizes(bad)


def test_helix_two_settings():
    result = run_program(program_class=Program, logger=null_out(),
                         args=[_helix(), "engine=gfn2", "sizes=30:4,30:40"])
    assert result.n_atoms == 94 and result.charge == 0
    assert np.isfinite(result.rms_gradient) and result.rms_gradient > 1
    small, whole = result.settings
    for r in (small, whole):
        assert r.n_fragments == 4
        assert all(np.isfinite([r.rms_error, r.max_error, r.setup_seconds,
                                r.gradient_seconds]))
        assert len(r.worst) == 5
    # a 4 A buffer: errors of a few percent of rms |g| (measured 8%)
    assert 0 < small.relative_rms_error < 0.2
    # a buffer covering the whole model reproduces the whole-model gradient
    assert whole.max_fragment_atoms == 94
    assert whole.max_error < 1e-3


def test_refuses_large_model_and_bad_sizes():
    with pytest.raises(Sorry, match="max_atoms"):
        run_program(program_class=Program, logger=null_out(),
                    args=[_helix(), "fragments_check.max_atoms=50"])
    with pytest.raises(Sorry, match="core_size:buffer_radius"):
        run_program(program_class=Program, logger=null_out(),
                    args=[_helix(), "sizes=30-4"])

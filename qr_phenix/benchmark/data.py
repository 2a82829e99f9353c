"""Simulated data of the 1us0 study: Fcalc from the reference, 6-4 A,
complete, 10 % free, 5 % random error on the amplitudes, seeded.

The same settings as the published `phenix.fmodel add_random_error_to_amplitudes_percent=5
type=real high_res=4 low_res=6 r_free=0.1` (docs/benchmark_1us0.md), run through the
fmodel Program of cctbx-base in-process.
"""

import os

from libtbx.utils import null_out

HIGH_RESOLUTION = 4.0
LOW_RESOLUTION = 6.0
FREE_FRACTION = 0.1
ERROR_PERCENT = 5.0


def simulate(reference_pdb, mtz_path, seed=0, log=None):
    """Write the data MTZ (columns FMODEL, R-free-flags); returns its summary."""
    from iotbx.data_manager import DataManager
    from iotbx.cli_parser import run_program
    from mmtbx.programs import fmodel

    args = [reference_pdb,
            "high_resolution=%s" % HIGH_RESOLUTION,
            "low_resolution=%s" % LOW_RESOLUTION,
            "r_free_flags_fraction=%s" % FREE_FRACTION,
            "add_random_error_to_amplitudes_percent=%s" % ERROR_PERCENT,
            "output.type=real",
            "random_seed=%d" % seed,
            "output.file_name=%s" % mtz_path]
    run_program(program_class=fmodel.Program, args=args,
                logger=log if log is not None else null_out())
    return summary(mtz_path)


def read(mtz_path):
    """(f_obs, r_free_flags as bool) on common reflections."""
    import iotbx.mtz
    arrays = iotbx.mtz.object(mtz_path).as_miller_arrays()
    f_obs = flags = None
    for a in arrays:
        label = a.info().label_string()
        if a.is_real_array() and flags is None and "free" in label.lower():
            flags = a
        elif a.is_real_array() and f_obs is None:
            f_obs = a
        elif a.is_integer_array() and flags is None:
            flags = a
    if f_obs is None or flags is None:
        raise RuntimeError("%s: need an amplitude and an R-free-flags column" % mtz_path)
    flags = flags.customized_copy(data=flags.data() == 1) if flags.is_integer_array() \
        else flags.customized_copy(data=flags.data() > 0.5)
    f_obs, flags = f_obs.common_sets(flags)
    return f_obs, flags


def summary(mtz_path):
    f_obs, flags = read(mtz_path)
    d_max, d_min = f_obs.d_max_min()
    return {"file": os.path.abspath(mtz_path), "n_reflections": f_obs.size(),
            "n_free": int(flags.data().count(True)),
            "d_max": round(d_max, 3), "d_min": round(d_min, 3),
            "completeness": round(f_obs.completeness(), 4)}

"""Checks of the input model shared by qr.refine and qr.prepare, and how
the reflection data are read."""

import contextlib

from libtbx.utils import Sorry

#: PHIL scope both programs include
input_phil_str = """
input
  .short_caption = Input
{
  first_model_only = False
    .type = bool
    .help = "Use only the first MODEL of a multi-model file (NMR ensemble, \
             trajectory); without it such a file is refused"
}
"""


@contextlib.contextmanager
def reflection_files_not_probed_as_maps():
    """While active, reading a file's crystal symmetry skips the map readers.

    DataManager.get_fmodel takes each reflection file's symmetry from
    iotbx.crystal_symmetry_from_any, which tries the map formats before MTZ;
    mrcfile then takes an MTZ header word for the length of a map's extended
    header and allocates that many bytes: 0.6-3.4 s per development entry's
    MTZ, 2-3 s for a 6 kB one, on every run. The loop skips readers that are
    None."""
    from iotbx import crystal_symmetry_from_any as readers
    saved = readers.from_ccp4_map, readers.from_xplor_map
    readers.from_ccp4_map = readers.from_xplor_map = None
    try:
        yield
    finally:
        readers.from_ccp4_map, readers.from_xplor_map = saved


def check_models(model, name, first_model_only):
    """Refuse a multi-MODEL file unless first_model_only; returns the number
    of MODELs."""
    n = len(model.get_hierarchy().models())
    if n > 1 and not first_model_only:
        raise Sorry("%s has %d MODELs (an ensemble); qr_phenix works on one model. Use"
                    " input.first_model_only=True to use the first, or split the file."
                    % (name, n))
    return n


def first_model(model):
    """mmtbx.model.manager with only the first MODEL of `model` (the same
    object when it has one)."""
    import mmtbx.model
    h = model.get_hierarchy()
    if len(h.models()) < 2:
        return model
    h = h.deep_copy()
    for m in h.models()[1:]:
        h.remove_model(m)
    return mmtbx.model.manager(model_input=None, pdb_hierarchy=h,
                               crystal_symmetry=model.crystal_symmetry())


def check_crystal_symmetry(model, name, data_names, data_symmetry=None):
    """X-ray refinement needs the model's cell and space group (CRYST1)."""
    cs = model.crystal_symmetry()
    if cs is not None and cs.unit_cell() is not None and cs.space_group() is not None:
        return
    hint = ""
    if data_symmetry is not None and data_symmetry.unit_cell() is not None:
        hint = " (the data %s have: CRYST1%9.3f%9.3f%9.3f%7.2f%7.2f%7.2f %s)" % (
            (", ".join(data_names),) + tuple(data_symmetry.unit_cell().parameters()) +
            (str(data_symmetry.space_group_info()),))
    raise Sorry("The model %s has no crystal symmetry (no CRYST1 record, or no cell in"
                " the mmCIF), which X-ray refinement needs. Add the CRYST1 record of the"
                " crystal the data were measured from%s." % (name, hint))


def check_occupancies(model, name):
    """A model whose atoms all have occupancy 0 scatters nothing: no scale
    to the data exists."""
    occ = model.get_hierarchy().atoms().extract_occ()
    if occ.size() and (occ > 0).count(True) == 0:
        raise Sorry("Every atom of %s has occupancy 0, so the model contributes nothing to"
                    " the calculated data. Set the occupancies (1.0 for a single"
                    " conformer) before refinement against data." % name)

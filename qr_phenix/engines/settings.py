"""Engine choice and options as PHIL, and the PHIL extract -> EngineSettings.

The `engine` choice and the `engine_options` scope are written here once;
every program that runs an engine includes them (qm_restraints in
restraints_manager, qr.fragments_check).  Each option of `engine_options` is
the EngineSettings field of the same name (base.py), copied by name, so an
option is added in two places: the PHIL below and the dataclass field.
"""

import dataclasses
import json

from libtbx.utils import Sorry

from qr_phenix.engines import get_engine, phil_choice
from qr_phenix.engines.base import EngineSettings

ENGINE_OPTIONS_PHIL = """
engine_options
  .help = "Settings passed to the engine; each engine reads the ones it uses"
{
  threads = 1
    .type = int
    .help = "Threads per engine calculation (OpenMP / BLAS)"
  solvent = auto
    .type = str
    .help = "Implicit solvent for every QM calculation (whole model, selection \
             and fragments alike): auto = water where the engine has an implicit \
             solvent model (tblite/xtb: ALPB; MOPAC: COSMO), vacuum otherwise; \
             None = vacuum; or a solvent name. In vacuum a charged model can \
             lose CO2 or a proton (226-atom peptide, charge +2, GFN2)"
  electronic_temperature = 300
    .type = float
    .help = "Electronic temperature in K (xTB); raised automatically on SCC failure"
  max_iterations = 250
    .type = int
  accuracy = 1.0
    .type = float
    .help = "xTB numerical accuracy (tblite, xtb --acc): the SCC convergence \
             and integral thresholds scale with it, so larger is looser and \
             faster. On prepared 1va7 (GFN2 fragments, ALPB water) 3 and 10 \
             changed the gradient by 0.03 % and 0.1 % of its rms (fragments \
             themselves: 4-7 %)"
  mozyme = False
    .type = bool
    .help = "MOPAC: linear-scaling localized-orbital SCF (large selections)"
  basis = def2-svp
    .type = str
    .help = "PySCF basis set"
  xc = b3lyp
    .type = str
    .help = "PySCF exchange-correlation functional (engine=dft)"
  dispersion = d3bj
    .type = str
    .help = "PySCF dispersion correction (d3bj, d3zero, d4 or none)"
  density_fit = True
    .type = bool
    .help = "PySCF density fitting (RI-J/K)"
  calculator = None
    .type = str
    .help = "engine=ase: calculator class as package.module:ClassName"
  calculator_kwargs = None
    .type = str
    .help = "engine=ase: keyword arguments as JSON, e.g. {\\"method\\": \\"GFN2-xTB\\"}"
  model_path = None
    .type = path
    .help = "Machine-learned potentials: local weights file (no download at run time)"
  binary = None
    .type = path
    .help = "Path of the engine program (xtb, mopac); default: search PATH"
  workdir = None
    .type = path
    .help = "Scratch directory for file-based engines"
}
"""

#: EngineSettings fields that come from the model, not from engine_options
FROM_THE_MODEL = ("name", "charge", "multiplicity")


def engine_phil_str(default="gfn2"):
    """The `engine` choice (every registered engine, `default` marked)."""
    return """engine = %s
  .type = choice
  .help = "Quantum engine (used when restraints=qm)"
  .short_caption = QM engine
""" % phil_choice(default)


def resolve_solvent(engine, solvent):
    """'auto' -> 'water' for engines with an implicit solvent model, else None."""
    if solvent is None or str(solvent).lower() in ("none", "vacuum"):
        return None
    if str(solvent).lower() == "auto":
        return "water" if get_engine(engine).solvation else None
    return solvent


def _calculator_kwargs(text):
    if not text:
        return {}
    try:
        return json.loads(text)
    except ValueError as e:
        raise Sorry("qm_restraints.engine_options.calculator_kwargs is not valid JSON"
                    " (%s): %s" % (e, text))


def _dispersion(text):
    return None if text is not None and text.lower() in ("none", "off", "false") else text


def engine_settings_from_params(params, charge, multiplicity) -> EngineSettings:
    """A PHIL extract with `engine` and `engine_options` -> EngineSettings for
    the engine factory (charge and multiplicity come from the model)."""
    options = params.engine_options
    if not options.accuracy or options.accuracy <= 0:
        raise Sorry("qm_restraints.engine_options.accuracy=%s: use a positive number"
                    " (1 = the engine's default; larger is looser and faster)"
                    % options.accuracy)
    values = {f.name: getattr(options, f.name) for f in dataclasses.fields(EngineSettings)
              if f.name not in FROM_THE_MODEL}
    values.update(
        solvent=resolve_solvent(params.engine, options.solvent),
        dispersion=_dispersion(options.dispersion),
        calculator_kwargs=_calculator_kwargs(options.calculator_kwargs))
    return EngineSettings(name=params.engine, charge=charge, multiplicity=multiplicity,
                          **values)

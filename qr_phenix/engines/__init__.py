"""Engine registry: name -> factory(EngineSettings) -> ASE calculator.

Every engine is an ASE calculator in eV and eV/A (see base.py); this module
only maps names to factories, says whether each is installed, and builds the
PHIL choice.  Engine modules are imported lazily, so importing the registry
loads no quantum package (tblite's thread and BLAS setup must happen before
tblite is first imported).
"""

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from libtbx.utils import Sorry

from qr_phenix.engines.base import (  # noqa: F401 (re-exported)
    EngineError, EngineSettings, EngineUnavailable, energy_and_gradient)


@dataclass(frozen=True)
class Engine:
    name: str
    description: str
    _factory: Callable
    _available: Callable
    #: has an implicit solvent model (EngineSettings.solvent)
    solvation: bool = False

    def factory(self, settings: EngineSettings):
        return self._factory(settings)

    def available(self, settings: EngineSettings = None):
        """(True, "") or (False, reason with the install hint)."""
        return self._available(settings)


def _lazy(module, attr, *args):
    """Call qr_phenix.engines.<module>.<attr>(*args, settings) on demand."""
    def call(settings):
        import importlib
        obj = getattr(importlib.import_module("qr_phenix.engines." + module), attr)
        return obj(*args)(settings) if args else obj(settings)
    return call


def _available(module, attr="available"):
    def check(settings=None):
        import importlib
        return getattr(importlib.import_module("qr_phenix.engines." + module), attr)(settings)
    return check


def _tblite_available(settings=None):
    from qr_phenix.engines import tblite
    return tblite.available()


ENGINES = OrderedDict((e.name, e) for e in (
    Engine("gfn2", "GFN2-xTB, tblite in-process (default)",
           _lazy("tblite", "factory", "gfn2"), _tblite_available, True),
    Engine("gfn1", "GFN1-xTB, tblite in-process",
           _lazy("tblite", "factory", "gfn1"), _tblite_available, True),
    Engine("xtb", "GFN2-xTB, the xtb program",
           _lazy("xtb_binary", "factory"), _available("xtb_binary"), True),
    Engine("gfnff", "GFN-FF force field, the xtb program",
           _lazy("xtb_binary", "factory_gfnff"), _available("xtb_binary"), True),
    Engine("pm7", "PM7, the MOPAC program (mozyme=True for MOZYME)",
           _lazy("mopac", "factory", "pm7"), _available("mopac"), True),
    Engine("pm6_d3h4", "PM6-D3H4, the MOPAC program",
           _lazy("mopac", "factory", "pm6_d3h4"), _available("mopac"), True),
    Engine("pm6", "PM6, the MOPAC program",
           _lazy("mopac", "factory", "pm6"), _available("mopac"), True),
    Engine("hf", "Hartree-Fock (+D3 via dispersion=), PySCF",
           _lazy("pyscf", "factory", "hf"), _available("pyscf")),
    Engine("dft", "Kohn-Sham DFT (xc=, basis=, dispersion=), PySCF",
           _lazy("pyscf", "factory", "dft"), _available("pyscf")),
    Engine("ase", "any ASE calculator by import path (calculator=, calculator_kwargs=)",
           _lazy("ase_import", "factory"), _available("ase_import")),
    Engine("ani2x", "ANI-2x (torchani), local weights file model_path=",
           _lazy("ml", "factory_ani2x"), _available("ml", "available_ani2x")),
    Engine("aimnet2", "AIMNet2 (aimnet), local weights file model_path=",
           _lazy("ml", "factory_aimnet2"), _available("ml", "available_aimnet2")),
    Engine("test", "analytic bonded Morse + repulsion, plumbing tests only",
           _lazy("test_engine", "factory"), lambda settings=None: (True, "")),
))


def engine_names():
    return list(ENGINES)


def normalize_name(name):
    return str(name).strip().lower().replace("-", "_")


def get_engine(name) -> Engine:
    key = normalize_name(name)
    if key not in ENGINES:
        raise Sorry("Unknown quantum engine %r. Valid engines: %s"
                    % (name, ", ".join(ENGINES)))
    return ENGINES[key]


def make_calculator(settings: EngineSettings):
    """The ASE calculator for settings.name; EngineUnavailable says how to
    install a missing engine."""
    engine = get_engine(settings.name)
    if settings.solvent and not engine.solvation:
        raise EngineError(
            "engine %s has no implicit solvent model; unset engine_options.solvent"
            " (implicit solvent: %s)" % (engine.name, ", ".join(
                e.name for e in ENGINES.values() if e.solvation)))
    ok, reason = engine.available(settings)
    if not ok:
        raise EngineUnavailable("engine %s is not available: %s" % (engine.name, reason))
    return engine.factory(settings)


def phil_choice(default="gfn2"):
    """PHIL choice string, e.g. '*gfn2 gfn1 xtb pm7 ...'."""
    default = normalize_name(default)
    if default not in ENGINES:
        raise Sorry("Unknown default engine %r. Valid engines: %s"
                    % (default, ", ".join(ENGINES)))
    return " ".join(("*" + n) if n == default else n for n in ENGINES)

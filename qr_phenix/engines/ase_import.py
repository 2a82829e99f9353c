"""Any ASE calculator, named by import path: engine "ase".

settings.calculator = "package.module:ClassName" (or "package.module.ClassName"),
settings.calculator_kwargs = keyword arguments for its constructor.  The
calculator is returned as is: it already speaks eV and eV/A, and
energy_and_gradient() converts to restraint units.  qr_phenix cannot pass the
charge/multiplicity to an arbitrary calculator: put them in calculator_kwargs
if it takes them.
"""

import importlib

from ase.calculators.calculator import BaseCalculator

from qr_phenix.engines.base import EngineError, EngineUnavailable


def available(settings=None):
    return True, ""


def import_object(path):
    """Object named 'pkg.mod:Name' or 'pkg.mod.Name'."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise EngineError("engine ase: calculator=%r is not an import path like"
                          " 'ase.calculators.emt:EMT'" % path)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise EngineUnavailable("engine ase: cannot import %r (%s); install the package"
                                " that provides it" % (module_name, e)) from e
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            raise EngineError("engine ase: module %r has no %r" % (module_name, attr)) from e
    return obj


def factory(settings):
    if not settings.calculator:
        raise EngineError("engine ase needs calculator=<import path>, e.g."
                          " calculator=ase.calculators.emt:EMT")
    cls = import_object(settings.calculator)
    try:
        calc = cls(**dict(settings.calculator_kwargs or {}))
    except Exception as e:
        raise EngineError("engine ase: %s(**%r) failed: %s"
                          % (settings.calculator, settings.calculator_kwargs, e)) from e
    if not isinstance(calc, BaseCalculator):
        raise EngineError("engine ase: %s did not return an ASE calculator (got %s)"
                          % (settings.calculator, type(calc).__name__))
    return calc

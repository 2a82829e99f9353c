"""Machine-learned potentials from a local weights file: ANI-2x and AIMNet2.

torchani and aimnet download their weights from the internet the first time a
model is built, which fails on offline machines (measured here).  qr_phenix
therefore only loads a model from a local file given as model_path:

* ani2x: a TorchScript file or a pickled torchani model that maps
  (atomic numbers (1, n), coordinates (1, n, 3) A) to energies in Hartree,
  i.e. a torchani model built with periodic_table_index=True.  Make one once
  on a machine with network access:
      m = torchani.models.ANI2x(periodic_table_index=True)
      torch.jit.save(torch.jit.script(m), "ani2x.pt")
* aimnet2: a model file as distributed with AIMNet2 (TorchScript .jpt, or
  what `aimnet` caches after its first download), loaded by
  aimnet.calculators.AIMNet2Calculator, or failing that as a raw TorchScript
  model with the original AIMNet2 interface (coord, numbers, charge -> energy
  in eV).

Neither package nor torch is installed in the development environment, so
this loading code is not exercised by the test suite (the tests check that the
engines report themselves unavailable with this advice).
"""

import importlib.util
import os

import numpy as np

from qr_phenix import units
from qr_phenix.engines._common import EngineCalculator
from qr_phenix.engines.base import EngineError, EngineUnavailable

_DOWNLOAD_NOTE = (
    "%s downloads its weights from the internet at first use, which fails"
    " offline; qr_phenix therefore needs a local weights file: pass"
    " model_path=/path/to/%s (see qr_phenix/engines/ml.py for how to make one).")

ANI2X_ELEMENTS = {1, 6, 7, 8, 9, 16, 17}
AIMNET2_ELEMENTS = {1, 5, 6, 7, 8, 9, 14, 15, 16, 17, 33, 34, 35, 53}


def _have(module):
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _check(package, label, filename, settings):
    if not _have("torch") or not _have(package):
        return False, ("%s needs PyTorch and the %r package (pip install torch %s). "
                       % (label, package, package)) + _DOWNLOAD_NOTE % (label, filename)
    if settings is None or not settings.model_path:
        return False, "%s: no model_path given. " % label + _DOWNLOAD_NOTE % (label, filename)
    if not os.path.isfile(settings.model_path):
        return False, "%s: model_path %r is not a file. " % (
            label, settings.model_path) + _DOWNLOAD_NOTE % (label, filename)
    return True, ""


def available_ani2x(settings=None):
    return _check("torchani", "ANI-2x", "ani2x.pt", settings)


def available_aimnet2(settings=None):
    return _check("aimnet", "AIMNet2", "aimnet2.jpt", settings)


def _load_torch_model(path):
    import torch
    try:
        return torch.jit.load(path, map_location="cpu")
    except Exception:
        # a pickled nn.Module (torch.save(model)): trusted local file only
        return torch.load(path, map_location="cpu", weights_only=False)


def _check_elements(numbers, allowed, label):
    bad = sorted(set(int(z) for z in numbers) - allowed)
    if bad:
        from ase.data import chemical_symbols
        raise EngineError("%s has no parameters for element(s) %s"
                          % (label, ", ".join(chemical_symbols[z] for z in bad)))


class ANI2xCalculator(EngineCalculator):
    engine_name = "ANI-2x"

    def __init__(self, settings, **kwargs):
        super().__init__(settings, **kwargs)
        ok, reason = available_ani2x(settings)
        if not ok:
            raise EngineUnavailable(reason)
        if settings.charge != 0 or settings.multiplicity != 1:
            raise EngineError("ANI-2x is trained on neutral closed-shell molecules only"
                              " (charge=%s, multiplicity=%s)"
                              % (settings.charge, settings.multiplicity))
        import torch
        torch.set_num_threads(max(1, int(settings.threads)))
        self.model = _load_torch_model(settings.model_path)
        self.model.eval()

    def _compute(self, numbers, positions):
        import torch
        _check_elements(numbers, ANI2X_ELEMENTS, self.engine_name)
        species = torch.tensor(np.asarray(numbers)[None, :], dtype=torch.long)
        coords = torch.tensor(positions[None, :, :], dtype=torch.float64, requires_grad=True)
        model = self.model.double()
        out = model((species, coords))
        energy = out.energies if hasattr(out, "energies") else out[1]
        (grad,) = torch.autograd.grad(energy.sum(), coords)
        # torchani: Hartree, and Hartree/A because coordinates are in A
        energy_ev = float(energy.sum().item()) * units.EV_PER_HARTREE
        forces = -grad[0].detach().cpu().numpy() * units.EV_PER_HARTREE
        return energy_ev, forces


class AIMNet2Calculator(EngineCalculator):
    engine_name = "AIMNet2"

    def __init__(self, settings, **kwargs):
        super().__init__(settings, **kwargs)
        ok, reason = available_aimnet2(settings)
        if not ok:
            raise EngineUnavailable(reason)
        import torch
        torch.set_num_threads(max(1, int(settings.threads)))
        self._calc = None
        self._raw = None
        try:
            from aimnet.calculators import AIMNet2Calculator as _Calc
            self._calc = _Calc(settings.model_path)
        except Exception as first:
            try:
                self._raw = _load_torch_model(settings.model_path)
            except Exception as e:
                raise EngineError("AIMNet2: cannot load %r: %s; %s"
                                  % (settings.model_path, first, e)) from e

    def _compute(self, numbers, positions):
        import torch
        _check_elements(numbers, AIMNET2_ELEMENTS, self.engine_name)
        s = self.settings
        if self._calc is not None:
            res = self._calc({"coord": positions, "numbers": np.asarray(numbers),
                              "charge": float(s.charge), "mult": float(s.multiplicity)},
                             forces=True)
            energy = float(np.asarray(res["energy"].detach().cpu()).sum())
            forces = res["forces"].detach().cpu().numpy().reshape(-1, 3)
            return energy, forces  # aimnet: eV and eV/A already
        if s.multiplicity != 1:
            raise EngineError("AIMNet2 raw TorchScript models are closed-shell only")
        coords = torch.tensor(positions[None], dtype=torch.float32, requires_grad=True)
        data = {"coord": coords,
                "numbers": torch.tensor(np.asarray(numbers)[None], dtype=torch.long),
                "charge": torch.tensor([float(s.charge)])}
        energy = self._raw(data)["energy"].sum()
        (grad,) = torch.autograd.grad(energy, coords)
        return float(energy.item()), -grad[0].detach().cpu().numpy().astype(float)


def factory_ani2x(settings):
    return ANI2xCalculator(settings)


def factory_aimnet2(settings):
    return AIMNet2Calculator(settings)

"""qr.refine: coordinate refinement with quantum-chemical or library restraints."""

import os
import time

import numpy as np
from libtbx.program_template import ProgramTemplate
from libtbx.utils import Sorry, null_out
from scitbx.array_family import flex

import qr_phenix
from qr_phenix import fragmentation
from qr_phenix import restraints_manager as qm_rm
from qr_phenix import validation
from qr_phenix.programs import inputs
from qr_phenix.refinement import adp as adp_mod
from qr_phenix.refinement import stages
from qr_phenix.refinement import weights as weights_mod
from qr_phenix.refinement.progress import CostReporter
from qr_phenix.refinement.statistics import engine_counters
from qr_phenix.files import atomic_write, atomic_write_json
from qr_phenix.refinement.checkpoint import Checkpoint, fingerprint

master_phil_str = qm_rm.qm_restraints_phil_str(default_restraints="qm") + \
    fragmentation.master_phil_str + inputs.input_phil_str + """
refinement
  .short_caption = Refinement
{
  mode = *auto xray real_space geometry
    .type = choice
    .help = "auto: xray with reflections, real_space with a map, geometry with neither"
  resolution = None
    .type = float
    .help = "Map resolution (A), required for real-space refinement"
  target = *ml ls
    .type = choice
    .help = "X-ray target: maximum likelihood or least squares"
  scattering_table = *n_gaussian wk1995 it1992 electron neutron
    .type = choice
    .help = "X-ray: form factors (n_gaussian as phenix.refine); maps use electron"
  bulk_solvent = True
    .type = bool
    .help = "X-ray: refine bulk-solvent parameters with the scales each macro-cycle"
  macro_cycles = 10
    .type = int
  max_iterations = 25
    .type = int
    .help = "L-BFGS iterations per minimisation (each weight trial, each cycle; \
             cycles on local QM models take twice as many: \
             refinement.qm_local_scope=all). 50 reaches further from far-off \
             starts (1.5 A helix starts, library: mean R-free 0.14 vs 0.16) at \
             twice the engine calls"
  r_tolerance = 0.0005
    .type = float
    .help = "Converged when R-work, R-free (or map CC) change less than this..."
  shift_tolerance = 0.005
    .type = float
    .help = "...and no atom moves more than this (A) in a macro-cycle"
  validation = *cycles ends off
    .type = choice
    .help = "Clashscore (probe2, hydrogens kept) and H-bond geometry: every \
             macro-cycle (real-space weight choice then also requires a \
             clashscore no worse than the start's), start and final model \
             only, or not at all"
%s
%s
%s
}
output
  .short_caption = Output
{
  prefix = None
    .type = str
    .help = "Output name prefix (default: <model>_refined); writes .pdb .cif .log \
             .json (no .pdb when the model does not fit PDB format)"
  overwrite = False
    .type = bool
  resume = False
    .type = bool
    .help = "Continue from <prefix>.checkpoint.json after an interruption"
}
""" % (weights_mod.master_phil_str, adp_mod.master_phil_str, stages.master_phil_str)


NO_FREE_FLAGS = ("The reflection data have no usable free-R flags (no test reflections)."
                 " Give the file with the flags used before as well or, if the model was"
                 " never refined against these data, add xray_data.r_free_flags.generate=True.")


class Program(ProgramTemplate):

    description = """
qr.refine: refine atomic coordinates against X-ray data, a cryo-EM map, or
geometry alone, with restraints from a quantum-chemical energy (default:
GFN2-xTB on the whole model) or from the monomer library.

Usage:
  python -m qr_phenix.refine model.pdb data.mtz [key=value ...]
  python -m qr_phenix.refine model.pdb map.mrc refinement.resolution=4.0
  python -m qr_phenix.refine model.pdb                       (geometry only)
  python -m qr_phenix.refine model.pdb data.mtz restraints=cctbx
  python -m qr_phenix.refine model.pdb data.mtz ligand.cif      (ligand dictionary)
  python -m qr_phenix.refine model.pdb data.mtz engine=pm7 selection="resname LIG"
  python -m qr_phenix.refine --show-defaults

Outputs <prefix>.pdb, .cif, .log, .json; a checkpoint after every macro-cycle
(resume=True continues an interrupted run).
"""

    datatypes = ["model", "miller_array", "real_map", "phil", "restraint"]
    master_phil_str = master_phil_str

    # ------------------------------------------------------------------
    def validate(self):
        dm = self.data_manager
        if not dm.has_models():
            raise Sorry("No model given: qr.refine needs a model file (PDB or mmCIF).")
        if len(dm.get_model_names()) > 1:
            raise Sorry("More than one model given (%s); give exactly one."
                        % ", ".join(dm.get_model_names()))
        inputs.check_models(dm.get_model(), dm.get_default_model_name(),
                            self.params.input.first_model_only)
        has_data = dm.has_miller_arrays()
        has_map = dm.has_real_maps()
        r = self.params.refinement
        mode = r.mode
        if mode == "auto":
            mode = "xray" if has_data else ("real_space" if has_map else "geometry")
        if has_data and has_map:
            raise Sorry("Both reflections and a map were given; give one (X-ray or cryo-EM).")
        if mode == "xray" and not has_data:
            raise Sorry("refinement.mode=xray needs a reflection file (MTZ or CIF).")
        if mode == "xray":
            inputs.check_crystal_symmetry(dm.get_model(), dm.get_default_model_name(),
                                          dm.get_miller_array_names(), self._data_symmetry())
        if mode in ("xray", "real_space"):
            inputs.check_occupancies(dm.get_model(), dm.get_default_model_name())
        if mode == "real_space":
            if not has_map:
                raise Sorry("refinement.mode=real_space needs a map file (CCP4/MRC).")
            if r.resolution is None or r.resolution <= 0:
                raise Sorry("Real-space refinement needs the map resolution:"
                            " add refinement.resolution=<d_min in A>.")
        if r.macro_cycles < 1 or r.max_iterations < 1:
            raise Sorry("refinement.macro_cycles and refinement.max_iterations must be >= 1.")
        weights_mod.parse_weight(r.weight)
        if not r.weight_trials or any(x <= 0 for x in r.weight_trials):
            raise Sorry("refinement.weight_trials must be positive numbers.")
        self.mode = mode
        prefix = self.output_prefix()
        existing = [prefix + ext for ext in (".pdb", ".cif", ".json")
                    if os.path.exists(prefix + ext)]
        if self.params.output.resume:
            if not (Checkpoint(prefix).exists() or Checkpoint(prefix + ".library").exists()):
                raise Sorry("output.resume=True but there is no checkpoint %s.checkpoint.json;"
                            " run without resume (or check output.prefix)." % prefix)
        elif existing and not self.params.output.overwrite:
            raise Sorry("Output files exist (%s). Use output.overwrite=True, another"
                        " output.prefix, or output.resume=True to continue an interrupted"
                        " run." % ", ".join(existing))

    def _data_symmetry(self):
        """Crystal symmetry of the reflection file, for messages (None if unknown)."""
        dm = self.data_manager
        try:
            arrays = dm.get_miller_array(dm.get_default_miller_array_name()).as_miller_arrays()
            return arrays[0].crystal_symmetry()
        except Exception:
            return None

    def output_prefix(self):
        if self.params.output.prefix:
            return self.params.output.prefix
        name = os.path.basename(self.data_manager.get_default_model_name())
        for ext in (".gz", ".pdb", ".ent", ".cif", ".mmcif"):
            if name.endswith(ext):
                name = name[: -len(ext)]
        return name + "_refined"

    # ------------------------------------------------------------------
    def run(self):
        t_start = time.perf_counter()
        self.prefix = self.output_prefix()
        self.log_path = self.prefix + ".log"
        self.results = None
        from qr_phenix.refinement.log_file import Tee
        tee = Tee(self.logger, self.log_path, append=self.params.output.resume)
        try:
            self._run(tee, t_start)
        finally:
            tee.close()

    def _run(self, log, t_start):
        p = self.params
        quantum = p.qm_restraints.restraints == "qm"
        print("qr_phenix %s  qr.refine  mode=%s  restraints=%s%s" % (
            qr_phenix.__version__, self.mode, p.qm_restraints.restraints,
            (" engine=%s" % p.qm_restraints.engine) if quantum else ""), file=log)
        model = self._load_model(log, quantum)
        checkpoint = Checkpoint(self.prefix)
        self.t_start = t_start
        fragments_on = quantum and fragmentation.fragments_enabled(
            p.fragments, model.get_number_of_atoms(), p.qm_restraints.selection)
        self._local_iterations(quantum, fragments_on, log)
        staged, why = self._library_stage(model, quantum, fragments_on)
        if quantum:
            print("Library stage before QM: %s (%s)" % ("yes" if staged else "no", why),
                  file=log)
        self.reporter = None

        def reporter(overhead_per_iteration=0.0, overhead_per_cycle=0.0):
            self.reporter = CostReporter(log, overhead_per_iteration=overhead_per_iteration,
                                         overhead_per_cycle=overhead_per_cycle, t0=t_start)
            return self.reporter
        if staged:
            self._set_fingerprint(model)
            refinement = stages.StagedRefinement(
                self._stage_factory(model, log),
                lambda checkpoint: self._restore_checkpoint(checkpoint, model),
                p.refinement, self.prefix,
                p.output.resume, log=log, fingerprint=self.fingerprint,
                reporter_factory=reporter)
        else:
            state = self._resume_state(checkpoint, model, log)
            refinement = self._make_refinement(model, log, quantum, checkpoint, state)
            if quantum:
                refinement.reporter = reporter()
        try:
            result = refinement.run(fixed_scale=weights_mod.parse_weight(p.refinement.weight))
        except KeyboardInterrupt:
            print("\nInterrupted. The last finished macro-cycle is in %s; rerun with"
                  " output.resume=True to continue." % checkpoint.path, file=log)
            raise
        except Sorry as e:
            if checkpoint.exists():
                print("\nStopped: %s\nThe last finished macro-cycle is in %s; fix the"
                      " cause and rerun with output.resume=True." % (e, checkpoint.path),
                      file=log)
            raise
        if p.refinement.validation == "ends":
            for stats in (result.start, result.final):
                if stats.clashscore is None:
                    refinement.set_state(refinement.state_of(stats.cycle))
                    validation.annotate(model, stats)
            refinement.set_state(refinement.state_of(result.selected or 0))
        self.refinement = refinement
        self._write_outputs(model, result, log, quantum, t_start)
        checkpoint.remove()
        if staged:
            refinement.remove_checkpoints()

    # ------------------------------------------------------------------
    def _load_model(self, log, quantum):
        from qr_phenix.monomer_library import process_model
        dm = self.data_manager
        name = dm.get_default_model_name()
        model_in = dm.get_model(name)
        p = self.params
        if not model_in.get_hierarchy().atoms_size():
            raise Sorry("The model %s contains no atoms." % name)
        if inputs.check_models(model_in, name, p.input.first_model_only) > 1:
            print("Using the first of %d MODELs in %s (input.first_model_only=True)" % (
                len(model_in.get_hierarchy().models()), name), file=log)
            model_in = inputs.first_model(model_in)
        # ions with an empty element column: calcium, not carbon, for cctbx and QM
        from qr_phenix.chemistry import fill_ion_elements
        fill_ion_elements(model_in.get_hierarchy())
        if quantum:  # before any library stage
            from qr_phenix.chemistry import check_single_conformer
            check_single_conformer(model_in.get_hierarchy())
        if self.mode == "real_space":
            model_in = self._map_model(model_in)
        # residues without a dictionary are accepted when QM covers them
        # physical units throughout (no division by the number of restraints)
        # ligand dictionaries given on the command line (restraint CIFs)
        restraint_objects = [(r, dm.get_restraint(r)) for r in dm.get_restraint_names()]
        try:
            model = process_model(model_in, stop_for_unknowns=not quantum, log=null_out(),
                                  grm_normalization=False,
                                  restraint_objects=restraint_objects)
        except Sorry as e:
            if "not covered by the restraints library" not in str(e):
                raise
            raise Sorry("%s Give their CIF dictionary on the command line (qr.refine model"
                        " data ligand.cif), or use QM restraints (qm_restraints.restraints="
                        "qm), which cover residues without one." % str(e).splitlines()[0])
        for resname, text in sorted(
                getattr(model, "qr_phenix_generated_dictionaries", {}).items()):
            path = "%s_%s.cif" % (self.prefix, resname)
            atomic_write(path, text)
            print("Restraints for %s: no library dictionary; generated from the CCD,"
                  " written to %s" % (resname, path), file=log)
        if quantum:
            qm_rm.check_unrestrained_residues(model, p.qm_restraints.selection)
        self.mm_name = name
        if self.mode == "xray":
            self._check_inside_cell(model)
        return model

    def _map_model(self, model_in):
        from iotbx.map_model_manager import map_model_manager
        dm = self.data_manager
        mm = dm.get_real_map(dm.get_default_real_map_name())
        try:
            self.mmm = map_model_manager(map_manager=mm, model=model_in)
        except Exception as e:  # cctbx raises AssertionError/Sorry on mismatch
            raise Sorry("The map and the model do not match (%s). Check that the model"
                        " was built into this map and that both have the same origin"
                        " and cell." % (str(e) or type(e).__name__))
        model = self.mmm.model()
        sites_frac = model.get_xray_structure().sites_frac()
        outside = ((sites_frac.as_double() < -0.05) | (sites_frac.as_double() > 1.05)).count(True)
        if outside > 0.1 * sites_frac.size() * 3:
            raise Sorry("Most of the model lies outside the map box: map/model mismatch."
                        " Use the map the model was built into, or box the map around the"
                        " model (phenix.map_box / iotbx map_model_manager).")
        return model

    def _check_inside_cell(self, model):
        frac = np.array(model.get_xray_structure().sites_frac())
        center = frac.mean(axis=0)
        if np.any(np.abs(center - 0.5) > 5):
            raise Sorry("The model lies %.0f unit cells away from the origin cell: the"
                        " coordinates or the CRYST1 record are wrong. Check the cell of the"
                        " model against the data." % np.abs(center - 0.5).max())

    def _set_fingerprint(self, model):
        self.fingerprint = fingerprint(
            model.get_number_of_atoms(),
            [a.id_str() for a in model.get_hierarchy().atoms()][:50],
            self.mode, self.params.qm_restraints.restraints, self.params.qm_restraints.engine,
            self.params.qm_restraints.selection)

    def _library_stage(self, model, quantum, fragments_on):
        p = self.params
        unrestrained = [label for label, _ in qm_rm.residues_without_restraints(model)] \
            if quantum else []
        return stages.use_library_stage(p.refinement, quantum, self.mode != "geometry",
                                        fragments_on, unrestrained)

    def _local_iterations(self, quantum, fragments_on, log):
        """Resolve refinement.qm_local_iterations (Auto) and say it."""
        p = self.params
        k, why = stages.local_iterations(p.refinement, quantum, fragments_on,
                                         p.qm_restraints.engine)
        p.refinement.qm_local_iterations = k
        if quantum:
            where = "weight trials" if p.refinement.qm_local_scope == "weight_trials" \
                else "weight trials and macro-cycles"
            print("Local QM models: %s (%s)" % (
                "%d L-BFGS steps per QM gradient in the %s" % (k, where) if k else "no", why),
                file=log)

    def _stage_factory(self, model, log):
        def make(quantum, refinement_params, checkpoint, state, fmodel):
            return self._make_refinement(model, log, quantum, checkpoint, state,
                                         refinement_params=refinement_params, fmodel=fmodel)
        return make

    def _resume_state(self, checkpoint, model, log):
        self._set_fingerprint(model)
        if not self.params.output.resume:
            return None
        return self._restore_checkpoint(checkpoint, model)

    def _restore_checkpoint(self, checkpoint, model):
        """The checkpoint's state, after checking it belongs to this job and
        putting its coordinates on the model."""
        state, sites = checkpoint.load()
        if state.get("fingerprint") != self.fingerprint or len(sites) != \
                model.get_number_of_atoms():
            raise Sorry("The checkpoint %s belongs to a different model or settings;"
                        " run without output.resume." % checkpoint.path)
        model.set_sites_cart(flex.vec3_double(sites))
        return state

    def _make_refinement(self, model, log, quantum, checkpoint, state, refinement_params=None,
                         fmodel=None):
        """One refinement (stage) on the model; quantum installs the QM restraints.
        A later stage passes the fmodel of the earlier one (its scales and B)."""
        p = self.params
        r = refinement_params or p.refinement
        kwargs = dict(log=log, checkpoint=checkpoint, checkpoint_state=state)
        if self.mode == "xray":
            first = fmodel is None
            if first:
                fmodel = self._fmodel(model)
                self._show_data(fmodel, log)
            d_min = fmodel.f_obs().d_min()
        elif self.mode == "real_space":
            d_min = r.resolution
            model.setup_scattering_dictionaries(scattering_table="electron")
        else:
            d_min = None
        if quantum:
            qm_rm.setup_restraints(model, p.qm_restraints, log=log,
                                   fragment_params=p.fragments, parallel_params=p.parallel)
        n_free = fmodel.r_free_flags().data().count(True) if self.mode == "xray" else None
        limits = weights_mod.limits_for(d_min, r, quantum, p.qm_restraints.engine, n_free)
        if self.mode == "xray":
            from qr_phenix.refinement.xray import XrayRefinement
            n_work = fmodel.r_free_flags().data().count(False)
            n_heavy = (~model.get_hd_selection()).count(True)
            self.adp_mode = adp_mod.resolve_mode(r.adp, n_work, n_heavy)
            if first:
                print("ADP refinement: %s (%d work reflections, %d non-H atoms)%s" % (
                    self.adp_mode, n_work, n_heavy,
                    " twin law %s" % fmodel.twin_law_str if fmodel.twin_law_str else ""),
                    file=log)
            ref = XrayRefinement(model, fmodel, r, limits, quantum, adp_mode=self.adp_mode,
                                 **kwargs)
        elif self.mode == "real_space":
            from qr_phenix.refinement.real_space import RealSpaceRefinement
            ref = RealSpaceRefinement(model, self.mmm, r.resolution, r, limits, quantum,
                                      **kwargs)
        else:
            from qr_phenix.refinement.real_space import GeometryMinimisation
            ref = GeometryMinimisation(model, r, limits, quantum, **kwargs)
        ref.checkpoint_meta = lambda: {"fingerprint": self.fingerprint}
        if r.validation == "cycles":
            ref.validator = validation.annotate
        self.d_min = d_min
        return ref

    def _fmodel(self, model):
        """fmodel for the processed model.  The DataManager chooses labels and
        free-R flags (with its messages when ambiguous); the fmodel is then
        rebuilt on the model's own xray structure, which mmtbx's minimiser
        and the restraints share."""
        import mmtbx.f_model
        import mmtbx.utils
        dm = self.data_manager
        table = self.params.refinement.scattering_table
        try:
            with inputs.reflection_files_not_probed_as_maps():
                probe = dm.get_fmodel(scattering_table=table)
        except Sorry as e:
            if "R-free flags" in str(e) and "Multiple" not in str(e):
                # cctbx's reason (none found, all flagged as test, ...) in one line
                reason = " ".join(str(e).split())
                raise Sorry("%s (cctbx: %s)" % (NO_FREE_FLAGS, reason[:200]))
            if "Multiple" not in str(e):
                raise
            labels = [l for name in dm.get_miller_array_names()
                      for l in dm.get_miller_array_all_labels(name)]
            raise Sorry("%s Arrays in the data: %s. Choose the data (and flags) with"
                        " miller_array.labels.name=<label> (repeat it for the free-R flags)."
                        % (str(e).strip(), ", ".join(labels)))
        except Exception as e:
            raise Sorry("Could not read the reflection data %s: %s" % (
                ", ".join(dm.get_miller_array_names()), str(e) or type(e).__name__))
        f_obs, flags = probe.f_obs(), probe.r_free_flags()
        if not model.crystal_symmetry().unit_cell().is_similar_to(f_obs.unit_cell()):
            raise Sorry("The unit cell of the model (%s) differs from that of the data %s"
                        " (%s). Use the model refined against these data, or correct its"
                        " CRYST1 record." % (
                            "%.2f %.2f %.2f %.1f %.1f %.1f"
                            % model.crystal_symmetry().unit_cell().parameters(),
                            ", ".join(dm.get_miller_array_names()),
                            "%.2f %.2f %.2f %.1f %.1f %.1f" % f_obs.unit_cell().parameters()))
        if flags is None or flags.data().count(True) == 0:
            raise Sorry(NO_FREE_FLAGS)
        if flags.data().count(True) == flags.size():
            raise Sorry("All reflections are flagged as free-R test reflections: the free-R"
                        " flag convention is probably inverted. Set the flag value with"
                        " data_manager.fmodel.xray_data.r_free_flags.test_flag_value.")
        model.setup_scattering_dictionaries(scattering_table=table, d_min=f_obs.d_min())
        # the twin law and mask parameters the DataManager chose travel with it
        return mmtbx.utils.fmodel_manager2(
            f_obs=f_obs, r_free_flags=flags, abcd=None,
            xray_structure=model.get_xray_structure(), twin_law=probe.twin_law_str,
            ignore_r_free_flags=False, mask_params=probe.mask_params,
            sf_accuracy_params=mmtbx.f_model.sf_and_grads_accuracy_master_params.extract())

    def _show_data(self, fmodel, log):
        f = fmodel.f_obs()
        flags = fmodel.r_free_flags().data()
        print("Data: %d reflections, %.2f-%.2f A, %d free (%.1f%%), target %s" % (
            f.size(), f.d_max_min()[0], f.d_max_min()[1], flags.count(True),
            100.0 * flags.count(True) / max(1, flags.size()), self.params.refinement.target),
            file=log)

    # ------------------------------------------------------------------
    def _write_outputs(self, model, result, log, quantum, t_start):
        prefix = self.prefix
        out = model
        if self.mode == "real_space":
            # the map-boxed input model knows the origin shift; write through it
            out = self.mmm.model()
            out.set_sites_cart(model.get_sites_cart())
        # hierarchy writers: model_as_pdb() would compute validation statistics
        # that need rotamer data cctbx-base does not ship
        hierarchy = out.get_hierarchy().deep_copy()
        if self.mode == "xray":   # refined B live in the xray structure
            hierarchy.atoms().set_b(model.get_xray_structure().b_iso_or_b_equiv())
        if out.shift_cart() is not None:
            out._shift_back(hierarchy)
        cs = out.unit_cell_crystal_symmetry() or out.crystal_symmetry()
        # a model that does not fit PDB format (chain ids longer than 2
        # characters, too many atoms) is written as mmCIF only
        pdb_ok = hierarchy.fits_in_pdb_format()
        if pdb_ok:
            atomic_write(prefix + ".pdb", hierarchy.as_pdb_string(crystal_symmetry=cs))
        atomic_write(prefix + ".cif", hierarchy.as_mmcif_string(crystal_symmetry=cs))
        calls, seconds = engine_counters(model)
        wall = time.perf_counter() - t_start
        s, f = result.start, result.final
        print("\nFinal (start -> model handed back, %s):" % (
            "start" if result.selected == 0 else "cycle %d" % result.selected), file=log)
        for key, label, fmt in (("r_work", "R-work", "%.4f"), ("r_free", "R-free", "%.4f"),
                                ("gap", "R-free - R-work", "%.4f"),
                                ("map_cc", "map CC (mask)", "%.4f"),
                                ("bond_rmsd", "bonds rmsd (non-H)", "%.4f"),
                                ("angle_rmsd", "angles rmsd (non-H)", "%.2f"),
                                ("mean_b", "mean B (A^2)", "%.1f"),
                                ("clashscore", "clashscore", "%.2f")):
            a, b = s.as_dict()[key], f.as_dict()[key]
            if a is None or b is None:
                continue
            print("  %-20s %s -> %s" % (label, fmt % a, fmt % b), file=log)
        if quantum:
            print("  engine %s: %d calls, %.1f s (%.0f%% of %.1f s wall)" % (
                self.params.qm_restraints.engine, calls, seconds,
                100 * seconds / max(wall, 1e-9), wall), file=log)
        for label, st in (("start", s), ("final", f)):
            if st.hbonds:
                print("  %-6s %s" % (label, validation.HBondResult(**st.hbonds).summary()),
                      file=log)
        if pdb_ok:
            print("Wrote %s.pdb, %s.cif, %s.json, %s.log" % ((prefix,) * 4), file=log)
        else:
            print("Wrote %s.cif, %s.json, %s.log (mmCIF only: the model does not fit PDB"
                  " format, chain ids longer than 2 characters or too many atoms)"
                  % ((prefix,) * 3), file=log)
        self.results = {
            "program": "qr_phenix.refine",
            "version": qr_phenix.__version__,
            "mode": self.mode,
            "restraints": self.params.qm_restraints.restraints,
            "engine": {"name": self.params.qm_restraints.engine if quantum else None,
                       "calls": calls, "seconds": seconds,
                       # this process's QM gradients in order (after a resume,
                       # only those since): what the cost estimate learns from
                       "gradient_seconds": [round(t, 2) for t in self.reporter.gradient_times]
                       if self.reporter else []},
            "d_min": self.d_min,
            "start": s.as_dict(),
            "final": f.as_dict(),
            "cycles": [c.as_dict() for c in result.cycles],
            "weight": {"scale": result.scale, "trials": [t.as_dict() for t in result.trials],
                       "limits": vars(result.limits) if result.limits else None},
            "converged": result.converged,
            "selected_cycle": result.selected,
            "selection": result.selection_note,
            "stopped": result.stopped,
            "adp": getattr(self, "adp_mode", None),
            "library_stage": self._library_stage_summary(),
            "cost_estimates": [{"elapsed_s": e, "estimated_total_s": t}
                               for e, t in self.reporter.estimates] if self.reporter else [],
            "cost_estimate_earliest_stop_s": self.reporter.earliest_estimate
            if self.reporter else None,
            "cost_estimate_all_cycles_s": self.reporter.all_cycles_estimate
            if self.reporter else None,
            "data": self._data_summary(),
            "wall_seconds": wall,
            "outputs": {"pdb": os.path.abspath(prefix + ".pdb") if pdb_ok else None,
                        "cif": os.path.abspath(prefix + ".cif"),
                        "log": os.path.abspath(prefix + ".log")},
            "parameters": self.master_phil.format(python_object=self.params).as_str(),
        }
        atomic_write_json(prefix + ".json", self.results)

    def _library_stage_summary(self):
        staged = self.refinement
        if not isinstance(staged, stages.StagedRefinement):
            return None
        lib = staged.library_result
        return {"cycles": len(lib.cycles), "selected": lib.selected,
                "r_free": lib.final.r_free, "selection": lib.selection_note}

    def _data_summary(self):
        fmodel = getattr(self.refinement, "fmodel", None)
        if fmodel is None:
            return None
        return {"twin_law": fmodel.twin_law_str,
                "bulk_solvent": bool(self.params.refinement.bulk_solvent),
                "k_mask_max": self.refinement.k_mask_max()}

    def get_results(self):
        return self.results

"""qr.fragments_check: fragment-assembled vs whole-model QM gradients."""

from libtbx.program_template import ProgramTemplate
from libtbx.utils import Sorry

from qr_phenix import chemistry
from qr_phenix.fragmentation import check as fragments_check


class Program(ProgramTemplate):

    description = """
qr.fragments_check: compute the whole-model QM gradient once and the
fragment-assembled gradient for several core_size:buffer_radius settings;
print per setting the fragments (count, size), setup and gradient times, the
rms and max per-atom error (kcal/mol/A), the error relative to rms |g|, and
the worst atoms.  The model must be atom-complete (python -m qr_phenix.prepare).

Usage:
  python -m qr_phenix.fragments_check model.pdb [engine=gfn2] [sizes=20:3,30:4,40:5]
  python -m qr_phenix.fragments_check model.pdb engine=pm7 engine_options.mozyme=True
"""

    datatypes = ["model", "phil"]
    master_phil_str = fragments_check.master_phil_str

    def validate(self):
        dm = self.data_manager
        if not dm.has_models():
            raise Sorry("No model given: qr.fragments_check needs a model file.")
        if len(dm.get_model_names()) > 1:
            raise Sorry("More than one model given; check one model at a time.")
        p = self.params.fragments_check
        self.sizes = fragments_check.parse_sizes(p.sizes)
        n = dm.get_model().get_number_of_atoms()
        if n > p.max_atoms and not p.force:
            raise Sorry("%d atoms: the whole-model reference gradient would be slow"
                        " (limit fragments_check.max_atoms=%d); check a part of the model"
                        " or use fragments_check.force=True." % (n, p.max_atoms))
        if self.params.parallel.nproc < 1 or self.params.parallel.threads_per_worker < 1:
            raise Sorry("parallel.nproc and parallel.threads_per_worker must be >= 1.")

    def run(self):
        from qr_phenix.engines.settings import engine_settings_from_params
        from qr_phenix.fragmentation import fragment_solvent
        from qr_phenix.fragmentation.parallel import make_executor
        model = self.data_manager.get_model()
        hierarchy = model.get_hierarchy()
        chemistry.check_single_conformer(hierarchy, "fragment checks")
        p = self.params.fragments_check
        settings = engine_settings_from_params(self.params, 0, 1)
        settings = fragment_solvent(settings, self.params.fragments_check.solvent, self.logger)
        executor = make_executor(self.params.parallel, log=self.logger)
        try:
            self.result = fragments_check.check_fragments(
                hierarchy, settings, self.sizes, crystal_symmetry=model.crystal_symmetry(),
                include_symmetry=p.include_symmetry, executor=executor, worst=p.worst,
                log=self.logger)
        finally:
            executor.close()

    def get_results(self):
        return self.result

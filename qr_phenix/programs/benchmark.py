"""qr.benchmark: the 1us0 polyglycine-helix study (Zheng et al. 2017) in one command."""

from libtbx.program_template import ProgramTemplate

from qr_phenix.benchmark import study


class Program(ProgramTemplate):

    description = """
qr.benchmark: reproduce the 1us0 polyglycine-helix study: build the reference,
simulate 6-4 A data, perturb it by MD (doses 0.3-1.5 A), refine every start
with every method through qr.refine, and report R factors, H-bond recovery,
rmsd, geometry and cost (report.md, results.json, two figures).

Usage:
  python -m qr_phenix.benchmark.helix_1us0 out_dir entry=1us0.pdb [key=value ...]
  python -m qr_phenix.benchmark.helix_1us0 out_dir quick=True nproc=2 entry=1us0.pdb
  qr.benchmark output_dir=out_dir methods=cctbx,gfn2,pm7 models_per_dose=10 nproc=2
  python -m qr_phenix.benchmark.helix_1us0 --show-defaults
"""

    datatypes = ["phil"]
    master_phil_str = study.master_phil_str

    def validate(self):
        study.validate(study.apply_quick(self.params))

    def run(self):
        self.results = study.run_study(self.params, log=self.logger)

    def get_results(self):
        return self.results

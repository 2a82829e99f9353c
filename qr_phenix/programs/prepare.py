"""qr.prepare: make a model atom-complete for quantum refinement."""

import os

from libtbx.program_template import ProgramTemplate
from libtbx.utils import Sorry

from qr_phenix.programs import inputs

master_phil_str = inputs.input_phil_str + """
prepare
  .short_caption = Model preparation
{
  ph = 7.0
    .type = float
    .help = "pH for protonation states (protein: standard pKa and H-bond based \
             histidine tautomers; ligands: CCD plus carboxyl/phosphate/amine rules)"
    .short_caption = pH
  add_missing_atoms = True
    .type = bool
    .help = "Rebuild missing heavy atoms of standard residues (side chains, OXT)"
  altlocs = *one keep
    .type = choice
    .help = "one: keep the conformer of highest occupancy (its atoms get \
             occupancy 1), as QM restraints need; keep: keep every conformer, \
             each prepared on its own (for library refinement, \
             qm_restraints.restraints=cctbx)"
  ligands = *ccd keep
    .type = choice
    .help = "ccd: add ligand hydrogens from the Chemical Component Dictionary; \
             keep: leave non-polymer residues as given"
}
output
{
  file_name = None
    .type = str
    .help = "Output model; default <input>_prepared.pdb. A .cif name writes mmCIF; \
             a model that does not fit PDB format (chain ids longer than 2 \
             characters, too many atoms) is written as mmCIF (.cif) only. \
             (str, not path: the cli parser reads existing path values as input)"
  overwrite = False
    .type = bool
}
"""


class Program(ProgramTemplate):

    description = """
qr.prepare: make a model ready for QM restraints: keep one conformer (or all,
with altlocs=keep, for library refinement), keep occupancies, rebuild
missing side-chain atoms, add every hydrogen (protein and water with PDBFixer
/OpenMM at the given pH, ligands from the Chemical Component Dictionary with
hydride, or from the ligand's restraint dictionary when one is given), and
report the total charge and protonation choices.

Usage:
  python -m qr_phenix.prepare model.pdb [ligand.cif] [ph=7.0] [altlocs=one|keep]
                             [output.file_name=out.pdb]
Models that do not fit PDB format (chain ids longer than 2 characters, too
many atoms) are written as mmCIF (.cif).
"""

    datatypes = ["model", "phil", "restraint"]
    master_phil_str = master_phil_str

    def validate(self):
        dm = self.data_manager
        if not dm.has_models():
            raise Sorry("No model given: qr.prepare needs a model file (PDB or mmCIF).")
        if len(dm.get_model_names()) > 1:
            raise Sorry("More than one model given (%s); prepare one model at a time."
                        % ", ".join(dm.get_model_names()))
        inputs.check_models(dm.get_model(), dm.get_default_model_name(),
                            self.params.input.first_model_only)
        if not 0 <= self.params.prepare.ph <= 14:
            raise Sorry("prepare.ph=%g is not a pH (0-14)." % self.params.prepare.ph)
        out = self.output_file_name()
        if os.path.exists(out) and not self.params.output.overwrite:
            raise Sorry("%s exists; use output.overwrite=True or another"
                        " output.file_name." % out)

    def output_file_name(self):
        if self.params.output.file_name:
            return self.params.output.file_name
        base = os.path.splitext(os.path.basename(self.data_manager.get_default_model_name()))[0]
        return base + "_prepared.pdb"

    def output_format(self, hierarchy):
        """(file name, note): a .pdb name becomes .cif when the model does not
        fit PDB format (chain ids longer than 2 characters, too many atoms)."""
        out = self.output_file_name()
        if out.endswith(".pdb") and not hierarchy.fits_in_pdb_format():
            out = out[:-4] + ".cif"
            if os.path.exists(out) and not self.params.output.overwrite:
                raise Sorry("%s exists; use output.overwrite=True or another"
                            " output.file_name." % out)
            return out, (" (mmCIF only: the model does not fit PDB format, chain ids"
                         " longer than 2 characters or too many atoms)")
        return out, ""

    def ligand_dictionaries(self):
        """{residue name: (cif block, file name)} from the restraint files given."""
        from qr_phenix.preparation.ligands import dictionary_components
        dm = self.data_manager
        result = {}
        for name in dm.get_restraint_names():
            for resname, block in dictionary_components([dm.get_restraint(name)]).items():
                result.setdefault(resname, (block, os.path.basename(name)))
        return result

    def run(self):
        from qr_phenix.preparation import prepare_hierarchy
        model = self.data_manager.get_model()
        if len(model.get_hierarchy().models()) > 1:
            print("Using the first of %d MODELs (input.first_model_only=True)"
                  % len(model.get_hierarchy().models()), file=self.logger)
            model = inputs.first_model(model)
        p = self.params.prepare
        print("Preparing %s for QM (pH %.1f)" % (
            self.data_manager.get_default_model_name(), p.ph), file=self.logger)
        hierarchy, report = prepare_hierarchy(
            model.get_hierarchy(), crystal_symmetry=model.crystal_symmetry(), ph=p.ph,
            add_missing_atoms=p.add_missing_atoms, ligands=p.ligands, log=self.logger,
            altlocs=p.altlocs,
            dictionaries=self.ligand_dictionaries())
        out, why = self.output_format(hierarchy)
        cs = model.crystal_symmetry()
        if out.endswith((".cif", ".mmcif")):
            text = hierarchy.as_mmcif_string(crystal_symmetry=cs)
        else:
            text = hierarchy.as_pdb_string(crystal_symmetry=cs)
        with open(out, "w") as f:
            f.write(text)
        print("Wrote %s%s" % (out, why), file=self.logger)
        self.results = dict(file_name=out, report=report, total_charge=report.total_charge,
                            n_atoms=report.n_atoms_out)

    def get_results(self):
        return self.results

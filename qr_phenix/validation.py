"""Model validation for hydrogenated models: all-atom clashscore and H-bonds.

``clashscore(model)`` runs mmtbx's probe2 in process on the model's own
hydrogens (no reduce, no files, no rotamer data); the score is the one
``mmtbx.programs.clashscore2 keep_hydrogens=True`` prints for the same atoms.
``hbond_geometry(model)`` summarises ``mmtbx.nci.hbond.find``.

Both take an ``mmtbx.model.manager`` with all hydrogens, normally from
``qr_phenix.monomer_library.process_model``; an unprocessed one is processed
first (unknown residues allowed). Neither raises on a failure of the mmtbx
tool: the result then has ``error`` set and no values.

Notes on the mmtbx tools (cctbx-base 2025.11):

* probe2 re-processes the model (pdb_interpretation plus restraints) to get
  bonds: about a quarter of its time.
* mmtbx leaves residues without a dictionary out of the per-atom energy
  types, so every later atom gets the wrong radius, or probe2 stops with
  "Invalid radius". Atoms without a nonbonded type are therefore left out of
  the probe model (``ClashResult.excluded``), and so are contacts to them.
* The clashscore2 program runs probe2 twice (the second run only makes its
  dot list). One condensed run without van der Waals dots gives the same
  clashes in less than half the time.
* probe2 ignores symmetry: contacts with symmetry mates are not counted.
* hbond.find can report a pair twice; each pair is counted once here.
"""

import math
import time
from dataclasses import asdict, dataclass, field
from typing import List, Optional

from libtbx.utils import null_out

# clashscore2: bad overlap is an overlap >= 0.4 A; atoms with occupancy
# <= 0.1 (or <= max occupancy / 100) and water sources are not scored.
CLASH_CUTOFF = 0.4
OCCUPANCY_FRACTION = 0.1


@dataclass
class ClashResult:
    """All-atom clashscore (clashes per 1000 scored atoms)."""

    clashscore: Optional[float]
    n_clashes: int = 0          # pairs overlapping >= 0.4 A, H-bonds excepted
    n_atoms: int = 0            # scored non-water atoms (the denominator)
    worst: List[str] = field(default_factory=list)  # worst first
    excluded: List[str] = field(default_factory=list)  # residues left out
    n_excluded_atoms: int = 0
    seconds: float = 0.0
    error: Optional[str] = None

    def as_dict(self):
        return asdict(self)

    def summary(self):
        if self.clashscore is None:
            return "clashscore: not available (%s)" % self.error
        text = "clashscore %.2f (%d clashes >= %.1f A, %d atoms)" % (
            self.clashscore, self.n_clashes, CLASH_CUTOFF, self.n_atoms)
        if self.worst:
            text += "; worst %s" % self.worst[0]
        if self.n_excluded_atoms:
            text += "; %d atoms without dictionary not scored" % (
                self.n_excluded_atoms)
        return text


@dataclass
class HBondResult:
    """D-H...A hydrogen bonds found by mmtbx.nci.hbond (its default cut-offs:
    1.4 <= d(H...A) <= 2.8 A, angle D-H...A >= 120 deg, 90 <= Y-A...H <= 180).
    Spreads (_sd) are rms deviations from the mean."""

    n: int
    n_backbone: int = 0         # peptide N-H...O=C (or OXT)
    n_symmetry: int = 0         # to a symmetry mate
    d_ha_mean: Optional[float] = None
    d_ha_sd: Optional[float] = None
    a_dha_mean: Optional[float] = None
    a_dha_sd: Optional[float] = None
    n_long: int = 0             # d(H...A) > long_d_ha
    n_bent: int = 0             # angle D-H...A < bent_a_dha
    n_poor: int = 0             # long or bent
    long_d_ha: float = 2.5
    bent_a_dha: float = 140.0
    seconds: float = 0.0
    error: Optional[str] = None

    @property
    def n_other(self):
        return self.n - self.n_backbone

    def as_dict(self):
        return asdict(self)

    def summary(self):
        if self.error is not None:
            return "H-bonds: not available (%s)" % self.error
        if self.n == 0:
            return "H-bonds: none"
        return ("H-bonds %d (%d backbone): H...A %.2f +- %.2f A, D-H...A "
                "%.1f +- %.1f deg, %d poor (H...A > %.1f A or angle < %.0f)"
                % (self.n, self.n_backbone, self.d_ha_mean, self.d_ha_sd,
                   self.a_dha_mean, self.a_dha_sd, self.n_poor,
                   self.long_d_ha, self.bent_a_dha))


def _error_text(e):
    text = str(e).strip().splitlines()
    return "%s: %s" % (type(e).__name__, text[0] if text else "")


def _processed(model):
    """The model itself if it has restraints, else a processed copy."""
    if model.get_restraints_manager() is not None:
        return model
    from qr_phenix.monomer_library import process_model
    return process_model(model, stop_for_unknowns=False)


def _unknown_atoms(model):
    """flex.bool: atoms without a nonbonded energy type (no dictionary)."""
    from scitbx.array_family import flex
    types = model.get_restraints_manager().geometry.nonbonded_types
    if types is None or len(types) != model.size():
        return flex.bool(model.size(), False)
    return flex.bool([t == "" for t in types])


def _residue_label(atom):
    ag = atom.parent()
    rg = ag.parent()
    return "%s %s %s" % (rg.parent().id.strip() or "-", ag.resname.strip(),
                         rg.resid().strip())


def _standard_hydrogens(model, nuclear):
    """Atom sites with every X-H set to the library's length along its bond
    (electron-cloud lengths, for probe's X-ray radii), as MolProbity rebuilds
    hydrogens before probe; nuclear=True keeps the sites as they are.  Without
    this, a QM-refined model (nuclear X-H, 1.09 A for C-H) is scored against
    X-ray radii and collects overlaps a library-refined one (0.97 A) does not:
    1va7, GFN2: clashscore 11.2 as refined."""
    import numpy as np
    from scitbx.array_family import flex
    from qr_phenix.monomer_library import library_bonds
    sites = model.get_sites_cart().deep_copy()
    if nuclear:
        return sites
    hd = np.array(model.get_hd_selection(), dtype=bool)
    pairs, ideal = library_bonds(model)
    mixed = hd[pairs[:, 0]] != hd[pairs[:, 1]]
    pairs, ideal = pairs[mixed], ideal[mixed]
    h_first = hd[pairs[:, 0]]
    h = np.where(h_first, pairs[:, 0], pairs[:, 1])
    x = np.where(h_first, pairs[:, 1], pairs[:, 0])
    xyz = np.array(sites)
    v = xyz[h] - xyz[x]
    d = np.linalg.norm(v, axis=1)
    ok = d > 0
    xyz[h[ok]] = xyz[x[ok]] + v[ok] * (ideal[ok] / d[ok])[:, None]
    return flex.vec3_double(xyz)


def _probe_model(model, sites, keep):
    import mmtbx.model
    hierarchy = model.get_hierarchy().deep_copy()
    hierarchy.atoms().set_xyz(sites)
    if keep is not None:
        hierarchy = hierarchy.select(keep)
    return mmtbx.model.manager(
        model_input=None,
        pdb_hierarchy=hierarchy.deep_copy(),
        crystal_symmetry=model.crystal_symmetry(),
        restraint_objects=model.get_restraint_objects(),
        stop_for_unknowns=False,
        log=null_out())


def _run_probe2(probe_model, occupancy_fraction, nuclear, density):
    import iotbx.cli_parser
    from iotbx.data_manager import DataManager
    from mmtbx.programs import probe2
    # As mmtbx.validation.clashscore2 (first of its two runs), but condensed,
    # without van der Waals dots and without writing a file.
    args = [
        "source_selection='(occupancy > %g) and not water'" % occupancy_fraction,
        "target_selection='occupancy > %g'" % occupancy_fraction,
        "use_neutron_distances=%s" % bool(nuclear),
        "approach=once",
        "probe.density=%g" % density,
        "output.format=raw",
        "output.condensed=True",
        "output.report_vdws=False",
        "output.write_files=False",
        "output.filename=unused",
        "ignore_lack_of_explicit_hydrogens=True",
    ]
    parser = iotbx.cli_parser.CCTBXParser(program_class=probe2.Program,
                                          logger=null_out())
    parser.parse_args(args)
    data_manager = DataManager(["model"])
    data_manager.add_model("model", probe_model)
    program = probe2.Program(data_manager, parser.working_phil.extract(),
                             master_phil=parser.master_phil, logger=null_out())
    program.overrideModel(probe_model)
    _, output = program.run()
    return output.splitlines()


def _clash_text(c):
    a, b = c.atoms_info

    def one(x):
        return "%s %s %s %s%s" % (x.chain_id.strip() or "-", x.resname.strip(),
                                  x.resseq.strip() + x.icode.strip(),
                                  x.name.strip(), x.altloc.strip())
    return "%s / %s %.3f" % (one(a), one(b), abs(c.overlap))


def clashscore(model, nuclear=False, max_list=10, density=16.0, log=None):
    """All-atom clashscore of the model's atoms as they are (probe2).

    nuclear: nuclear X-H distances and radii (clashscore2's nuclear=True).
    max_list: how many of the worst clashes to keep as text.
    density: probe2 dots per A^2 (16 is MolProbity's; lower is faster).
    Returns a ClashResult; on a probe2 failure its clashscore is None and
    error holds the reason.
    """
    import iotbx.pdb
    from mmtbx.validation import utils as validation_utils
    from mmtbx.validation.clashscore2 import probe_clashscore_manager
    from scitbx.array_family import flex
    from qr_phenix.monomer_library import activate_library
    start = time.time()
    excluded, n_excluded = [], 0
    try:
        activate_library()
        model = _processed(model)
        unknown = _unknown_atoms(model)
        keep = None
        n_excluded = unknown.count(True)
        if n_excluded:
            atoms = model.get_hierarchy().atoms()
            for i in unknown.iselection():
                label = _residue_label(atoms[i])
                if label not in excluded:
                    excluded.append(label)
            keep = ~unknown
        probe_model = _probe_model(model, _standard_hydrogens(model, nuclear), keep)
        hierarchy = probe_model.get_hierarchy()
        occ = hierarchy.atoms().extract_occ()
        if occ.size() == 0:
            raise ValueError("no atoms to score")
        occupancy_fraction = min(OCCUPANCY_FRACTION, flex.max(occ) / 100.0)
        use_segids = validation_utils.use_segids_in_place_of_chainids(
            hierarchy=hierarchy)
        lines = _run_probe2(probe_model, occupancy_fraction, nuclear, density)
        manager = probe_clashscore_manager(
            condensed_probe=True, nuclear=nuclear, use_segids=use_segids)
        clashes = manager.process_raw_probe_output(lines)
        n_atoms = 0
        for a in hierarchy.atoms():
            water = iotbx.pdb.common_residue_names_get_class(
                name=a.parent().resname) == "common_water"
            if a.occ > occupancy_fraction and not water:
                n_atoms += 1
    except Exception as e:  # a failed check must not stop the caller
        if log is not None:
            print("clashscore failed: %s" % _error_text(e), file=log)
        return ClashResult(clashscore=None, excluded=excluded,
                           n_excluded_atoms=n_excluded,
                           seconds=time.time() - start, error=_error_text(e))
    worst = []
    for c in sorted(clashes, key=lambda c: c.overlap):
        text = _clash_text(c)
        if text not in worst:
            worst.append(text)
        if len(worst) >= max_list:
            break
    score = 1000.0 * len(clashes) / n_atoms if n_atoms else 0.0
    return ClashResult(clashscore=score, n_clashes=len(clashes),
                       n_atoms=n_atoms, worst=worst, excluded=excluded,
                       n_excluded_atoms=n_excluded,
                       seconds=time.time() - start)


def _is_backbone(r):
    # by atom names only: donor N, acceptor O or OXT
    return (r.atom_D.name.strip() == "N"
            and r.atom_A.name.strip() in ("O", "OXT"))


def _unique(found):
    # find() can list a pair twice, as (i, j) and (j, i) (about 8 % of a
    # prepared 3.5k-atom entry); the symop then moves H instead of A.
    seen, result = set(), []
    for r in found:
        symop = r.symop
        if symop is not None and r.atom_H.index != r.i:
            symop = symop.inverse()
        key = (r.atom_H.index, r.atom_A.index, str(symop))
        if key not in seen:
            seen.add(key)
            result.append(r)
    return result


def _mean_and_spread(values):
    n = len(values)
    mean = sum(values) / n
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / n)


def hbond_geometry(model, long_d_ha=2.5, bent_a_dha=140.0, log=None):
    """Count and geometry of the model's D-H...A hydrogen bonds.

    long_d_ha, bent_a_dha: thresholds for 'poor' H-bonds (A, degrees); the
    finder itself drops angles below 120 deg and H...A above 2.8 A.
    Returns an HBondResult; on failure n is 0 and error holds the reason.
    """
    import mmtbx.nci.hbond
    start = time.time()
    try:
        model = _processed(model)
        found = _unique(mmtbx.nci.hbond.find(model=model).result)
    except Exception as e:
        if log is not None:
            print("H-bond search failed: %s" % _error_text(e), file=log)
        return HBondResult(n=0, long_d_ha=long_d_ha, bent_a_dha=bent_a_dha,
                           seconds=time.time() - start, error=_error_text(e))
    result = HBondResult(n=len(found), long_d_ha=long_d_ha,
                         bent_a_dha=bent_a_dha)
    if found:
        result.d_ha_mean, result.d_ha_sd = _mean_and_spread(
            [float(r.d_HA) for r in found])
        result.a_dha_mean, result.a_dha_sd = _mean_and_spread(
            [float(r.a_DHA) for r in found])
        result.n_backbone = sum(1 for r in found if _is_backbone(r))
        result.n_symmetry = sum(1 for r in found
                                if r.symop is not None
                                and str(r.symop) != "x,y,z")
        result.n_long = sum(1 for r in found if r.d_HA > long_d_ha)
        result.n_bent = sum(1 for r in found if r.a_DHA < bent_a_dha)
        result.n_poor = sum(1 for r in found
                            if r.d_HA > long_d_ha or r.a_DHA < bent_a_dha)
    result.seconds = time.time() - start
    return result


def annotate(model, stats):
    """Put the clashscore and H-bond summary of `model` into a refinement
    cycle's statistics (anything with clashscore/hbonds/add_note)."""
    clash = clashscore(model)
    stats.clashscore = clash.clashscore
    stats.hbonds = hbond_geometry(model).as_dict()
    if clash.error:
        stats.add_note("clashscore: %s" % clash.error)

"""Scores of a model against the known answer: H-bond recovery and rmsd,
plus R factors and non-H geometry for models not refined by qr.refine
(the perturbed starts).

H-bond score as published (docs/benchmark_1us0.md): the reference pairs O(i)...H(i+4) with
1.7 < d < 2.2 A; a pair is recovered when its O...H distance is again in
that window; no angle criterion.
"""

import numpy as np

import iotbx.pdb

HBOND_MIN, HBOND_MAX = 1.7, 2.2
HELIX_STEP = 4


def keyed_sites(path_or_text):
    """{(chain, resseq, name): xyz} of a PDB file or PDB text (first model)."""
    if "\n" in path_or_text:
        pdb_in = iotbx.pdb.input(source_info=None, lines=path_or_text.splitlines())
    else:
        pdb_in = iotbx.pdb.input(file_name=path_or_text)
    h = pdb_in.construct_hierarchy()
    out = {}
    for chain in h.models()[0].chains():
        for rg in chain.residue_groups():
            for a in rg.atoms():
                out.setdefault((chain.id, rg.resseq_as_int(), a.name.strip()), np.array(a.xyz))
    return out


def _amide_h(sites, chain, resseq):
    for name in ("H", "HN", "H1", "HT1"):
        if (chain, resseq, name) in sites:
            return (chain, resseq, name)
    return None


def reference_hbonds(reference_sites, lo=HBOND_MIN, hi=HBOND_MAX):
    """[(O key, H key, distance)] of the helical O(i)...H(i+4) pairs in the window."""
    pairs = []
    for (chain, resseq, name), xyz in sorted(reference_sites.items()):
        if name != "O":
            continue
        h = _amide_h(reference_sites, chain, resseq + HELIX_STEP)
        if h is None:
            continue
        d = float(np.linalg.norm(xyz - reference_sites[h]))
        if lo < d < hi:
            pairs.append(((chain, resseq, name), h, d))
    return pairs


def hbonds_recovered(sites, pairs, lo=HBOND_MIN, hi=HBOND_MAX):
    """Number of reference pairs whose O...H distance is in the window in `sites`."""
    n = 0
    for o, h, _ in pairs:
        if o in sites and h in sites:
            if lo < float(np.linalg.norm(sites[o] - sites[h])) < hi:
                n += 1
    return n


def rmsd(sites, reference_sites, heavy_only=False):
    """Rmsd over atoms matched by (chain, resseq, name), no superposition (the
    model stays in the crystal frame of the data)."""
    keys = [k for k in reference_sites if k in sites
            and not (heavy_only and k[2].startswith("H"))]
    if not keys:
        return None
    d = np.array([sites[k] - reference_sites[k] for k in keys])
    return float(np.sqrt((d ** 2).sum(axis=1).mean()))


class Scorer:
    """Reference-based scores of model files."""

    def __init__(self, reference_pdb):
        self.reference = keyed_sites(reference_pdb)
        self.pairs = reference_hbonds(self.reference)

    def __call__(self, path_or_text):
        sites = keyed_sites(path_or_text)
        n = hbonds_recovered(sites, self.pairs)
        return {"hbonds": n, "hbonds_total": len(self.pairs),
                "rmsd_all": rmsd(sites, self.reference),
                "rmsd_heavy": rmsd(sites, self.reference, heavy_only=True)}


class StartModelStats:
    """R factors (same scaling as qr.refine with bulk_solvent=False) and non-H
    geometry vs the library, for models that were not refined by qr.refine."""

    def __init__(self, reference_pdb, mtz_path):
        from iotbx.data_manager import DataManager
        from qr_phenix.monomer_library import process_model
        from qr_phenix.refinement.statistics import HeavyAtomGeometry
        self.mtz_path = mtz_path
        self.model = process_model(reference_pdb, log=None)
        self.geometry = HeavyAtomGeometry(self.model)
        dm = DataManager()
        dm.process_miller_array_file(mtz_path)
        dm.process_model_file(reference_pdb)
        self.dm = dm
        self.fmodel = dm.get_fmodel(scattering_table="n_gaussian")

    def __call__(self, pdb_path):
        from scitbx.array_family import flex
        sites = flex.vec3_double(iotbx.pdb.input(file_name=pdb_path).atoms().extract_xyz())
        xrs = self.fmodel.xray_structure
        xrs.set_sites_cart(sites)
        self.fmodel.update_xray_structure(xray_structure=xrs, update_f_calc=True)
        from qr_phenix.refinement.xray import update_scales
        update_scales(self.fmodel, bulk_solvent=False)
        bond, angle = self.geometry(sites)
        r_work, r_free = self.fmodel.r_work(), self.fmodel.r_free()
        return {"r_work": r_work, "r_free": r_free, "gap": r_free - r_work,
                "bond_rmsd": bond, "angle_rmsd": angle}

"""1us0 helix benchmark: reference, H-bond metric, perturbation dose (fast),
and quick mode end to end (2 doses x 2 models x cctbx+gfn2; a few minutes on
2 cores) checking that report, JSON and both figures exist and agree."""

import json
import os
import re

import numpy as np
import pytest

from qr_phenix.benchmark import metrics, perturb, reference, report

from paths import ENTRY_1US0 as ENTRY, HELIX_MTZ, HELIX_PDB as PUBLISHED

needs_data = pytest.mark.skipif(not (ENTRY.is_file() and PUBLISHED.is_file()),
                                reason="needs ../shared/data/1us0")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    text = reference.build(reference.read_entry(str(ENTRY)))
    path = tmp_path_factory.mktemp("ref") / "reference.pdb"
    path.write_text(text)
    return str(path), text


@needs_data
def test_reference_matches_published(built):
    _, text = built
    c = reference.compare(text, str(PUBLISHED))
    assert c.n_matched == c.n_reference == c.n_built == 94
    assert c.cell_difference < 1e-3
    assert c.rmsd_heavy < 0.02      # heavy atoms are 1us0's own (+ placed OXT)
    assert c.rmsd_h < 0.15          # geometric H vs the published H


def test_place_gives_requested_geometry():
    a, b, c = np.array([0.0, 1.4, 0.0]), np.array([0.0, 0.0, 0.0]), np.array([1.5, 0.0, 0.0])
    d = reference.place(a, b, c, 1.09, 109.5, 60.0)
    assert abs(np.linalg.norm(d - c) - 1.09) < 1e-9
    assert abs(reference.bond_angle(b, c, d) - 109.5) < 1e-6


@needs_data
def test_hbond_metric(built):
    path, text = built
    scorer = metrics.Scorer(path)
    pairs = scorer.pairs
    assert len(pairs) == 9
    assert [(o[1], h[1]) for o, h, _ in pairs] == [(i, i + 4) for i in range(87, 96)]
    assert all(1.7 < d < 2.2 for _, _, d in pairs)
    assert scorer(path)["hbonds"] == 9
    # the published reference scores all 9 too
    assert scorer(str(PUBLISHED))["hbonds"] == 9
    # pull one H 0.5 A away from its O: exactly that pair is lost
    sites = metrics.keyed_sites(text)
    o, h, _ = pairs[3]
    u = (sites[h] - sites[o]) / np.linalg.norm(sites[h] - sites[o])
    sites[h] = sites[h] + 0.5 * u
    assert metrics.hbonds_recovered(sites, pairs) == 8
    # and a pair pushed inside 1.7 A is not counted either
    sites[h] = sites[o] + 1.6 * u
    assert metrics.hbonds_recovered(sites, pairs) == 8


@needs_data
def test_perturbation_dose_and_seed(built):
    path, _ = built
    p = perturb.Perturber(path)
    ref_sites = metrics.keyed_sites(path)
    for dose in (0.3, 0.9):
        text, rec = p.run(dose, seed=perturb.seed_for(dose, 0))
        sites = metrics.keyed_sites(text)
        shift = np.mean([np.linalg.norm(sites[k] - ref_sites[k]) for k in ref_sites])
        assert rec.reached
        assert dose <= shift < dose + 0.05
        assert abs(shift - rec.mean_shift) < 1e-3
        assert 1.0 < rec.rmsd / rec.mean_shift < 1.3   # published: rmsd ~1.15 x dose
    again, rec2 = p.run(0.9, seed=perturb.seed_for(0.9, 0))
    assert again == text and rec2 == rec
    other, _ = p.run(0.9, seed=perturb.seed_for(0.9, 1))
    assert other != text
    assert len({perturb.seed_for(d, i) for d in (0.3, 0.6, 0.9, 1.2, 1.5)
                for i in range(10)}) == 50


@needs_data
@pytest.mark.parametrize("method", ["cctbx", "gfn2", "pm7", "hf_d3", "bp86"])
def test_method_arguments_are_valid_refine_parameters(method, tmp_path):
    """Every method's qr.refine arguments (opt-in ones too) pass its validation."""
    import subprocess
    from qr_phenix.benchmark import jobs
    if not _refine_available():
        pytest.skip("qr_phenix.refine not importable")
    job = jobs.Job(method, 0.3, 0, str(PUBLISHED), str(HELIX_MTZ),
                   str(tmp_path))
    r = subprocess.run(job.command(str(tmp_path / "x")) + ["--dry-run"], capture_output=True,
                       text=True, env=jobs.child_env())
    assert r.returncode == 0, (r.stdout + r.stderr)[-2000:]


def _table_rows(md):
    rows = {}
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 11 and re.match(r"^\d+\.\d$", cells[1]):
            rows[(cells[0], cells[1])] = cells
    return rows


def _refine_available():
    try:
        import qr_phenix.programs.refine  # noqa: F401
        return True
    except Exception:
        return False


def test_time_left_uses_each_methods_own_job_time():
    from qr_phenix.benchmark.jobs import seconds_left
    # two PM7 jobs of 90 and 110 s and one library job of 4 s done; waiting: one PM7
    # and three library jobs on 2 processes -> (100 + 3 x 4) / 2
    assert seconds_left({"pm7": [90.0, 110.0], "cctbx": [4.0]},
                        ["pm7", "cctbx", "cctbx", "cctbx"], 2) == pytest.approx(56.0)
    assert seconds_left({"pm7": [100.0]}, [], 2) == 0
    # a method not timed yet: no estimate rather than a wrong one
    assert seconds_left({"cctbx": [4.0]}, ["gfn2"], 2) is None


@needs_data
@pytest.mark.skipif(not _refine_available(), reason="qr_phenix.refine not importable")
def test_quick_mode_end_to_end(tmp_path, capsys):
    from qr_phenix.benchmark import study
    from qr_phenix.command_line.benchmark import run
    out = tmp_path / "quick"
    args = [str(out), "quick=True", "nproc=2", "entry=%s" % ENTRY,
            "published_reference=%s" % PUBLISHED]
    run(args)
    # a line per job with the time so far; the last one estimates nothing left
    job_lines = [l for l in capsys.readouterr().out.splitlines() if re.match(r"\s+\[\d+/8\]", l)]
    assert len(job_lines) == 8, job_lines
    assert "min left" in job_lines[-2] and "~0 min left" in job_lines[-1], job_lines
    for name in ("report.md", "results.json", "fig4_r_factors.png", "fig5_hbonds.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for name in ("fig4_r_factors.png", "fig5_hbonds.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = json.loads((out / "results.json").read_text())
    assert res["settings"]["methods"] == ["cctbx", "gfn2"]
    assert res["doses"] == [0.3, 1.5]
    assert res["n_hbonds"] == 9
    assert res["failed"] == []
    md = (out / "report.md").read_text()
    rows = _table_rows(md)
    # the machine's speed beside the wall times: a real GFN2 gradient, 94 atoms
    assert 0.001 < res["machine_gfn2_helix_gradient_s"] < 10
    assert "Machine speed: GFN2 gradient of the 94-atom 1us0 helix %.3f s" % (
        res["machine_gfn2_helix_gradient_s"]) in md
    for name, per_dose in [("start", res["starts"])] + list(res["methods"].items()):
        for d in ("0.3", "1.5"):
            s = per_dose[d]
            assert s["n"] == len(s["models"]) == 2
            # means are the means of the per-model numbers
            for f in ("r_work", "r_free", "rmsd_all", "bond_rmsd"):
                assert abs(s[f] - np.mean([m[f] for m in s["models"]])) < 1e-9
            assert abs(s["hbonds_pct"] - 100.0 * sum(m["hbonds"] for m in s["models"])
                       / (9 * 2)) < 1e-9
            for m in s["models"]:
                assert abs(m["gap"] - (m["r_free"] - m["r_work"])) < 1e-6
                assert 0 <= m["hbonds"] <= 9
                assert 0 < m["r_work"] < 1 and 0 < m["r_free"] < 1
            # report.md shows the same numbers
            cells = rows[(report.LABELS[name], d)]
            assert cells[3] == "%.4f" % s["r_work"] and cells[4] == "%.4f" % s["r_free"]
            assert cells[6] == "%.1f" % s["hbonds_pct"]
    # every method refined the same starts (qr.refine's own start R agrees)
    for d in ("0.3", "1.5"):
        a, b = ({m["index"]: m["start_r_work"] for m in res["methods"][k][d]["models"]}
                for k in ("cctbx", "gfn2"))
        assert a.keys() == b.keys() and all(abs(a[i] - b[i]) < 1e-6 for i in a)
    # refinement improved the fit from every start
    for method, per_dose in res["methods"].items():
        for d in ("0.3", "1.5"):
            assert per_dose[d]["r_free"] < res["starts"][d]["r_free"]
    assert res["methods"]["gfn2"]["1.5"]["engine_calls"] > 0
    # the checks are computed from the same numbers
    for c in res["checks"]:
        assert c["ok"] == (c["value"] <= c["bar"] if "R-free" in c["check"]
                           else (c["value"] >= c["bar"] if ">=" in c["check"]
                                 else c["value"] > c["bar"]))
    # resumable: a second run refines nothing and gives the same numbers
    res2 = study.run_study(_params(out), log=open(os.devnull, "w"))
    assert res2["jobs"]["run_now"] == 0
    assert res2["methods"]["gfn2"]["1.5"]["r_free"] == res["methods"]["gfn2"]["1.5"]["r_free"]


def _params(out):
    import iotbx.phil
    from qr_phenix.benchmark import study
    p = iotbx.phil.parse(study.master_phil_str).extract()
    p.output_dir = str(out)
    p.quick = True
    p.nproc = 2
    p.entry = str(ENTRY)
    p.published_reference = str(PUBLISHED)
    return p

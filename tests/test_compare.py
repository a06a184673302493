"""molsample.analysis.compare and `molsample compare`: state free energies and their errors, MD -> compare
pipeline, particle systems, clear failures."""
import json
import math

import numpy as np
import pytest
import torch

from molsample.analysis.compare import _md_fraction, _weighted_fraction, delta_f_from_fraction
from molsample.analysis.ensembles import load_ensemble
from molsample.cli import main
from molsample.md import MDSettings, run_md
from molsample.targets import load_target


def test_two_state_free_energy_with_known_answer():
    rng = np.random.default_rng(0)
    p_true = 1 / (1 + math.exp(2.0))                      # dF = 2 kT
    ind = rng.random(40_000) < p_true
    p, dp = _weighted_fraction(ind.astype(float), None, n_boot=100)
    d = delta_f_from_fraction(p, dp)
    assert abs(d["value"] - 2.0) < 4 * d["stderr"] and d["stderr"] < 0.05
    # weighted: states sampled 50/50, weights restore p_true
    ind2 = rng.random(40_000) < 0.5
    log_w = np.where(ind2, math.log(p_true), math.log(1 - p_true))
    p2, dp2 = _weighted_fraction(ind2.astype(float), log_w, n_boot=100)
    assert abs(delta_f_from_fraction(p2, dp2)["value"] - 2.0) < 4 * delta_f_from_fraction(p2, dp2)["stderr"]


def test_a_population_resting_on_few_effective_draws_is_flagged():
    from molsample.analysis.compare import MIN_EFFECTIVE_IN_STATE, state_estimates
    from molsample.analysis.ensembles import Ensemble
    rng = np.random.default_rng(2)
    n = 20_000
    phi = np.where(rng.random(n) < 0.3, 1.0, -1.5)
    inside = phi > 0
    ens = lambda log_w: Ensemble("s", "sampler", np.zeros((n, 1, 3)), np.zeros(n), log_w=log_w, phi=phi,
                                 psi=np.zeros(n))
    even = state_estimates(ens(np.zeros(n)))["dF_phi_positive_minus_negative_kT"]
    assert even["effective_in_state"] == pytest.approx(inside.sum()) and "note" not in even
    # inside the state the weight sits on a few draws: Kish (sum w)^2 / sum w^2 over them, and a note
    lw = np.where(inside, -20.0, 0.0)
    lw[np.flatnonzero(inside)[:3]] = [0.0, 0.0, math.log(2.0)]
    few = state_estimates(ens(lw))["dF_phi_positive_minus_negative_kT"]
    w = np.exp(lw[inside])
    assert few["effective_in_state"] == pytest.approx(w.sum() ** 2 / (w ** 2).sum()) and few["effective_in_state"] < 4
    assert few["effective_in_state"] < MIN_EFFECTIVE_IN_STATE and "too few" in few["note"]
    raw = state_estimates(ens(lw), use_weights=False)["p_phi_positive"]     # unweighted: the draws themselves
    assert raw["effective_in_state"] == inside.sum()


def test_md_error_uses_the_statistical_inefficiency():
    rng = np.random.default_rng(1)
    iid = (rng.random(20_000) < 0.3).astype(float)
    p, dp = _md_fraction(iid, [20_000])
    assert dp == pytest.approx(math.sqrt(0.3 * 0.7 / 20_000), rel=0.15)
    sticky = np.repeat(iid[:2000], 10)                        # each value held for 10 frames
    _, dp_sticky = _md_fraction(sticky, [20_000])
    assert dp_sticky > 2.5 * dp


def test_md_file_into_compare_and_clear_errors(tmp_path, capsys):
    s = MDSettings(system="aldp", ns=0.01, report_every=20, equilibration_ps=0.02, chunk_frames=500)
    run_md(s, tmp_path / "a.h5", show_progress=False)
    run_md(MDSettings(**{**s.__dict__, "seed": 1}), tmp_path / "b.dcd", show_progress=False)
    out = tmp_path / "cmp"
    code = main(["compare", str(tmp_path / "a.h5"), "--reference", str(tmp_path / "b.dcd"), "--system", "aldp",
                 "--out", str(out), "--json"])
    assert code == 0
    metrics = json.loads(capsys.readouterr().out)
    m = metrics["as_sampled"]
    assert metrics["sample"]["kind"] == "md" and metrics["reference"]["kind"] == "md"
    assert 0 <= m["kl_phi"] < 5 and m["energy_w1_kT"] >= 0 and m["w2_torus_phi_psi"] >= 0
    # 10 ps of MD: a basin with fewer than 50 independent frames is "not sampled", the others are numbers
    sampled = [b["value"] for b in m["basins"].values() if b["value"] is not None]
    assert all(b["sampled"] is False for b in m["basins"].values() if b["value"] is None)
    assert sum(sampled) <= 1 + 1e-9
    report = (out / "report.md").read_text()
    assert "not sampled" in report and "None" not in report
    for f in ("metrics.json", "report.md", "ramachandran.png", "phi_profile.png", "energy.png"):
        assert (out / f).is_file()
    # mismatched systems and atoms: clear errors
    code = main(["compare", str(tmp_path / "a.h5"), "--reference", str(tmp_path / "b.dcd"), "--system", "lj13"])
    assert code == 2
    np.savez(tmp_path / "bad.npz", x=np.zeros((5, 21, 3)), log_w=np.zeros(5), meta=json.dumps({"system": "aldp"}))
    code = main(["compare", str(tmp_path / "bad.npz"), "--reference", str(tmp_path / "a.h5")])
    assert code == 2 and "(21, 3)" in capsys.readouterr().err


def test_compact_references_give_the_same_estimates(tmp_path, capsys):
    from molsample.umbrella import UmbrellaSettings, run_umbrella
    s = MDSettings(system="aldp", ns=0.01, report_every=20, equilibration_ps=0.02, chunk_frames=500)
    for seed, name in ((0, "a.h5"), (1, "b.h5")):
        run_md(MDSettings(**{**s.__dict__, "seed": seed}), tmp_path / name, show_progress=False)
    assert main(["pack-reference", "md", str(tmp_path / "a.h5"), str(tmp_path / "b.h5"), "--system", "aldp",
                 "--out", str(tmp_path / "md_compact.npz"), "--frames", "50"]) == 0
    run_umbrella(UmbrellaSettings(windows=4, kappa=5.0, ns_per_window=0.004, equilibration_ps=1.0, sample_every=20,
                                  frame_every=200), tmp_path / "u.npz", workers=2)
    assert main(["pack-reference", "umbrella", str(tmp_path / "u.npz"), "--system", "aldp",
                 "--out", str(tmp_path / "u_compact.npz"), "--frames", "30"]) == 0
    target = load_target("aldp")
    full = load_ensemble([tmp_path / "a.h5", tmp_path / "b.h5"], target)
    packed = load_ensemble([tmp_path / "md_compact.npz"], target)
    assert packed.kind == "md" and packed.segments == full.segments == [500, 500]
    assert np.allclose(packed.phi, full.phi, atol=1e-6) and len(packed.x) == 50
    uf, up = load_ensemble([tmp_path / "u.npz"], target), load_ensemble([tmp_path / "u_compact.npz"], target)
    assert np.allclose(uf.angle_log_w, up.angle_log_w) and up.external == uf.external
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "a.h5"), "--reference", str(tmp_path / "u_compact.npz"), "--system",
                 "aldp", "--out", str(tmp_path / "c"), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["reference"]["kind"] == "umbrella" and "dF_minus_reference_kT" in m["as_sampled"]


def test_lj_compare_writes_pair_distance_histograms(tmp_path, capsys):
    run_md(MDSettings(system="lj13", ns=0.004, report_every=20, equilibration_ps=0.02), tmp_path / "a.h5",
           show_progress=False)
    run_md(MDSettings(system="lj13", ns=0.004, report_every=20, equilibration_ps=0.02, seed=3), tmp_path / "b.h5",
           show_progress=False)
    assert main(["compare", str(tmp_path / "a.h5"), "--reference", str(tmp_path / "b.h5"), "--system", "lj13",
                 "--out", str(tmp_path / "c"), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)["as_sampled"]
    assert (tmp_path / "c" / "pair_distances.png").is_file() and m["pair_distance_w1"] >= 0
    assert m["pair_distance_w2"] >= m["pair_distance_w1"] and m["equivariant_w2"] > 0
    dem = m["dem_convention"]
    assert np.isclose(dem["energy_w2_squared"], dem["energy_w2"] ** 2)
    assert m["energy_w2_squared_kT2"] > 0


def test_lj_dem_convention_energy_distance_is_the_pair_part_doubled(tmp_path):
    from molsample.analysis.compare import particle_metrics
    from molsample.analysis.ensembles import Ensemble
    from molsample.targets import load_target
    target = load_target("lj13")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 13, 3)) * 0.8
    y = x * 1.02                                  # a slightly stretched copy
    ens = lambda z: Ensemble("s", "samples", z, target.energy(torch.as_tensor(z)).numpy())
    m = particle_metrics(ens(y), ens(x), target, use_weights=False, n_eq=10)
    dem = load_target("lj13", convention="dem")
    ud, ux = dem.energy(torch.as_tensor(y)).numpy(), dem.energy(torch.as_tensor(x)).numpy()
    from molsample.analysis.stats import wasserstein_1d
    assert np.isclose(m["dem_convention"]["energy_w1"], wasserstein_1d(ux, ud))

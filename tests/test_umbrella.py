"""Umbrella sampling + MBAR: synthetic windows with a known answer, and a tiny real run."""
import json
import math

import numpy as np
import pytest

from molsample.analysis.basins import basin_indicators
from molsample.umbrella import UmbrellaSettings, bias_energy, mbar_analysis, run_umbrella, window_centres


def test_mbar_recovers_a_known_dihedral_distribution(tmp_path):
    # U(theta)/kT = 3 cos(theta) + 0.8 sin(theta) on the circle; sample each window's biased density exactly
    kt, kappa, n_win = 2.5, 20.0, 12
    s = UmbrellaSettings(windows=n_win, kappa=kappa)
    grid = np.linspace(-math.pi, math.pi, 20001)[:-1]
    u = 3 * np.cos(grid) + 0.8 * np.sin(grid)
    rng = np.random.default_rng(0)
    files = []
    for k, c in enumerate(window_centres(n_win)):
        p = np.exp(-u - bias_energy(grid, c, kappa) / kt)
        th = rng.choice(grid, size=4000, p=p / p.sum())
        np.savez(tmp_path / f"w{k}.npz", centre=[c], phi=th, psi=rng.uniform(-math.pi, math.pi, th.size))
        files.append(str(tmp_path / f"w{k}.npz"))
    res, log_w, phi, _ = mbar_analysis(s, files, kt)
    exact_p = np.exp(-u)[grid > 0].sum() / np.exp(-u).sum()
    exact_df = -math.log(exact_p / (1 - exact_p))
    d = res["dF_phi_positive_minus_negative_kT"]
    assert abs(d["value"] - exact_df) < 4 * d["stderr"] and d["stderr"] < 0.05
    assert abs(np.exp(log_w).sum() - 1) < 1e-9
    assert abs(np.exp(log_w)[phi > 0].sum() - exact_p) < 0.02


def test_basins_partition_the_torus():
    phi, psi = np.meshgrid(np.linspace(-3.1, 3.1, 50), np.linspace(-3.1, 3.1, 50))
    ind = basin_indicators(phi, psi)
    assert np.array_equal(sum(v.astype(int) for v in ind.values()), np.ones_like(phi, dtype=int))
    one = lambda a, b: {k for k, v in basin_indicators(np.radians([a]), np.radians([b])).items() if v[0]}
    assert one(-80, 80) == {"C7eq/beta"} and one(-70, -40) == {"alpha_R"}
    assert one(60, 45) == {"alpha_L"} and one(70, -70) == {"C7ax"}


def test_tiny_umbrella_run_on_aldp(tmp_path):
    s = UmbrellaSettings(windows=4, kappa=5.0, ns_per_window=0.004, equilibration_ps=1.0, sample_every=20,
                         frame_every=200)
    meta = run_umbrella(s, tmp_path / "u.npz", workers=2)
    data = np.load(tmp_path / "u.npz")
    assert data["phi"].shape == (4 * 200,) and data["frames_xyz"].shape == (4 * 20, 22, 3)
    assert abs(np.exp(data["log_w"]).sum() - 1) < 1e-9
    assert not math.isnan(meta["estimates"]["dF_phi_positive_minus_negative_kT"]["value"])
    saved = json.loads((tmp_path / "u.json").read_text())
    with pytest.raises(ValueError, match="barely overlap"):
        run_umbrella(UmbrellaSettings(windows=4, kappa=2000.0, ns_per_window=0.004, equilibration_ps=1.0,
                                      sample_every=20, frame_every=200), tmp_path / "v.npz", workers=2)
    assert saved["settings"]["windows"] == 4 and saved["cpu_seconds_windows"] > 0


def test_mbar_on_a_2d_grid_of_windows(tmp_path):
    # independent phi and psi, U/kT = 3 cos(phi) + 0.8 sin(phi) + 1.5 cos(psi - 1): 4 x 4 windows restraining both
    kt, kappa, n = 2.5, 10.0, 4
    s = UmbrellaSettings(dihedral="phi+psi", windows=n, kappa=kappa)
    grid = np.linspace(-math.pi, math.pi, 4001)[:-1]
    u_phi, u_psi = 3 * np.cos(grid) + 0.8 * np.sin(grid), 1.5 * np.cos(grid - 1)
    rng = np.random.default_rng(1)
    files = []
    from molsample.umbrella import all_centres
    for k, (c1, c2) in enumerate(all_centres(s)):
        p1 = np.exp(-u_phi - bias_energy(grid, c1, kappa) / kt)
        p2 = np.exp(-u_psi - bias_energy(grid, c2, kappa) / kt)
        np.savez(tmp_path / f"w{k}.npz", centre=[c1, c2], phi=rng.choice(grid, 3000, p=p1 / p1.sum()),
                 psi=rng.choice(grid, 3000, p=p2 / p2.sum()))
        files.append(str(tmp_path / f"w{k}.npz"))
    assert len(files) == 16
    res, log_w, phi, psi = mbar_analysis(s, files, kt)
    exact_p = np.exp(-u_phi)[grid > 0].sum() / np.exp(-u_phi).sum()
    d = res["dF_phi_positive_minus_negative_kT"]
    assert abs(d["value"] + math.log(exact_p / (1 - exact_p))) < 4 * d["stderr"] and d["stderr"] < 0.05
    w = np.exp(log_w)
    exact_mean_cos_psi = (np.cos(grid) * np.exp(-u_psi)).sum() / np.exp(-u_psi).sum()
    assert abs((w * np.cos(psi)).sum() - exact_mean_cos_psi) < 0.03

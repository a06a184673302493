"""Umbrella sampling + MBAR: synthetic windows with a known answer, and a tiny real run."""
import json
import math

import numpy as np
import pytest

from molsample.analysis.basins import basin_indicators
from molsample.umbrella import UmbrellaSettings, bias_energy, mbar_analysis, run_umbrella, window_centres


def _exact_windows(tmp_path, seed: int, size: int, stuck=range(0)):
    """12 windows (kappa 20 kJ/mol/rad^2, kT 2.5 kJ/mol) on U(theta)/kT = 3 cos(theta) + 0.8 sin(theta),
    each sampled exactly from its biased density; windows in ``stuck`` hold each of their first
    size / 25 draws 25 times in a row. Returns (settings, kT, grid, u on the grid, window files)."""
    kt, kappa, n_win = 2.5, 20.0, 12
    s = UmbrellaSettings(windows=n_win, kappa=kappa)
    grid = np.linspace(-math.pi, math.pi, 20001)[:-1]
    u = 3 * np.cos(grid) + 0.8 * np.sin(grid)
    rng = np.random.default_rng(seed)
    files = []
    for k, c in enumerate(window_centres(n_win)):
        p = np.exp(-u - bias_energy(grid, c, kappa) / kt)
        th = rng.choice(grid, size=size, p=p / p.sum())
        if k in stuck:
            th = np.repeat(th[: size // 25], 25)
        np.savez(tmp_path / f"w{k}.npz", centre=[c], phi=th, psi=rng.uniform(-math.pi, math.pi, th.size))
        files.append(str(tmp_path / f"w{k}.npz"))
    return s, kt, grid, u, files


def test_mbar_recovers_a_known_dihedral_distribution(tmp_path):
    # U(theta)/kT = 3 cos(theta) + 0.8 sin(theta) on the circle; sample each window's biased density exactly
    s, kt, grid, u, files = _exact_windows(tmp_path, seed=0, size=4000)
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
    from molsample.io import open_npz, samples_kind
    assert samples_kind(open_npz(tmp_path / "u.npz")) == "umbrella"                # the file records its kind
    assert samples_kind(open_npz(next((tmp_path / "u.windows").glob("window_*.npz")))) == "umbrella-window"
    assert abs(np.exp(data["log_w"]).sum() - 1) < 1e-9
    assert not math.isnan(meta["estimates"]["dF_phi_positive_minus_negative_kT"]["value"])
    saved = json.loads((tmp_path / "u.json").read_text())
    with pytest.raises(ValueError, match="barely overlap"):
        run_umbrella(UmbrellaSettings(windows=4, kappa=2000.0, ns_per_window=0.004, equilibration_ps=1.0,
                                      sample_every=20, frame_every=200), tmp_path / "v.npz", workers=2)
    assert saved["settings"]["windows"] == 4 and saved["cpu_seconds_windows"] > 0
    # two chains through neighbouring windows: each chain's first window is steered from the minimised
    # structure, every later one starts from the end of the window before it in its chain
    assert sorted(sum(meta["chains"], [])) == [0, 1, 2, 3] and len(meta["chains"]) == 2
    for chain in meta["chains"]:
        assert meta["starts"][chain[0]]["from_window"] == -1
        assert [meta["starts"][k]["from_window"] for k in chain[1:]] == chain[:-1]
    win = meta["estimates"]["windows"]
    assert win["n_windows_cis_or_flipped"] == 0 and set(win["g_by_observable"]) == {"phi", "psi", "omega", "restraint",
                                                                                      "energy"}
    assert all(g >= 1 for g in win["g"])


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


# --- the restraint OpenMM applies, the bias MBAR uses, and the window protocol -------------------------------

def _aldp_frames(n=300):
    """Configurations spread over (phi, psi): the shipped MD frames plus the same frames mirrored
    (x -> -x sends every torsion to its negative, so phi > 0 and the wrap at +-pi are covered)."""
    import pathlib
    ref = pathlib.Path(__file__).resolve().parents[1] / "systems/aldp/reference/aldp_md_2x50ns.npz"
    x = np.load(ref)["frames_xyz"][::10][: n // 2].astype(np.float64)
    return np.concatenate([x, x * np.array([-1.0, 1.0, 1.0])])


def test_openmm_restraint_and_mbar_bias_are_one_function():
    import openmm
    from openmm import unit
    from molsample.targets import load_target
    from molsample.umbrella import RESTRAINT_GROUP, add_restraints, dihedral, dihedral_atoms, window_bias
    t = load_target("aldp")
    s = UmbrellaSettings(dihedral="phi+psi", windows=(30, 18), kappa=(300.0, 100.0))
    system = openmm.System()
    for _ in range(t.n_particles):
        system.addParticle(1.0)
    params = add_restraints(system, t.topology, s)
    assert params == ["theta0_phi", "theta0_psi"]
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    x = _aldp_frames()
    ang = {n: dihedral(x, dihedral_atoms(t.topology, n)) for n in ("phi", "psi")}
    assert (ang["phi"] > 0).sum() > 50 and np.abs(ang["psi"]).max() > 3.0     # both signs and the wrap are covered
    rng = np.random.default_rng(3)
    centres = np.concatenate([[[math.pi - 1e-9, -math.pi]], rng.uniform(-math.pi, math.pi, (6, 2))])
    worst = 0.0
    for c in centres:
        for p, v in zip(params, c):
            ctx.setParameter(p, float(v))
        mine = window_bias(ang, c, ["phi", "psi"], [300.0, 100.0])
        for xi, m in zip(x, mine):
            ctx.setPositions(xi)
            e = ctx.getState(getEnergy=True, groups={RESTRAINT_GROUP}).getPotentialEnergy()
            worst = max(worst, abs(e.value_in_unit(unit.kilojoule_per_mole) - m))
    assert worst < 1e-8
    # and it is the textbook periodic harmonic restraint, not a look-alike: 0.5 kappa (wrapped angle)^2
    d = np.angle(np.exp(1j * (ang["phi"] - 2.0)))
    assert np.allclose(window_bias(ang, [2.0], ["phi"], 300.0), 150.0 * d ** 2, atol=1e-9)


def test_float64_dihedrals_agree_with_mdtraj_and_detect_mirror_images():
    import mdtraj
    from molsample.targets import load_target
    from molsample.umbrella import chirality, chirality_atoms, dihedral, dihedral_atoms, omega_atoms
    t = load_target("aldp")
    x = _aldp_frames(100)
    traj = mdtraj.Trajectory(x.astype(np.float32), t.topology)
    om = omega_atoms(t.topology)
    assert [[t.topology.atom(i).name for i in q] for q in om] == [["CH3", "C", "N", "CA"], ["CA", "C", "N", "C"]]
    for q in [dihedral_atoms(t.topology, "phi"), dihedral_atoms(t.topology, "psi")] + om:
        ref = mdtraj.compute_dihedrals(traj, [q])[:, 0]
        assert np.abs(np.angle(np.exp(1j * (dihedral(x, q) - ref)))).max() < 1e-4
    (quad,) = chirality_atoms(t.topology)
    pdb = chirality(np.asarray(t.positions)[None], quad)[0]
    assert pdb > 0                                               # the shipped structure is L-alanine
    n = len(x) // 2
    assert (chirality(x[:n], quad) > 0).all() and (chirality(x[n:], quad) < 0).all()   # mirrored frames are D
    w = np.stack([dihedral(x[:n], q) for q in om], axis=1)
    assert (np.abs(w) > math.radians(150)).all()                # MD at 300 K keeps both peptide bonds trans


def test_statistical_inefficiency_sees_a_slow_part_under_a_libration():
    # x = slow AR(1) part + a fast libration (alternating sign): pymbar's sum of the autocorrelation stops
    # at its first zero and clamps the negative sum to g = 1; the true g from the variance of the mean over
    # independent replicas is far larger, and the block estimate finds it
    from pymbar import timeseries
    from molsample.umbrella import statistical_inefficiency
    rng = np.random.default_rng(0)
    n, reps, rho = 2000, 300, 0.97
    def series():
        e = rng.normal(size=n)
        slow = np.empty(n)
        slow[0] = e[0]
        for i in range(1, n):
            slow[i] = rho * slow[i - 1] + math.sqrt(1 - rho ** 2) * e[i]
        return 0.35 * slow + 1.5 * (-1.0) ** np.arange(n) * (1 + 0.3 * rng.normal(size=n))
    xs = [series() for _ in range(reps)]
    true_g = np.var([x.mean() for x in xs]) * n / np.mean([x.var() for x in xs])
    assert true_g > 3
    pym = np.median([timeseries.statistical_inefficiency(x) for x in xs[:20]])
    mine = np.median([statistical_inefficiency(x) for x in xs[:20]])
    assert pym < 0.5 * true_g
    assert 0.6 * true_g < mine < 1.6 * true_g
    white = rng.normal(size=4000)
    assert statistical_inefficiency(white) < 1.5


def test_serpentine_chains_visit_every_window_once_through_neighbours():
    from molsample.umbrella import all_centres, chains, serpentine_order, wrap_angle
    for s in (UmbrellaSettings(dihedral="phi+psi", windows=(6, 4)), UmbrellaSettings(dihedral="phi+psi", windows=5),
              UmbrellaSettings(windows=7)):
        order = serpentine_order(s)
        c = all_centres(s)
        assert sorted(order) == list(range(len(c)))
        spacing = 2 * math.pi / np.array(s.windows if isinstance(s.windows, tuple) else [s.windows] * c.shape[1])
        steps = np.abs(wrap_angle(np.diff(c[order], axis=0))) / spacing
        assert np.allclose(np.sort(steps, axis=1), [[0.0] * (c.shape[1] - 1) + [1.0]] * len(steps), atol=1e-9)
        start = np.array([-1.4, 2.9][: c.shape[1]])
        parts = chains(s, 3, start)
        assert sorted(sum(parts, [])) == list(range(len(c))) and len(parts) == 3
        first = parts[0][0]
        assert np.abs(wrap_angle(c - start)).sum(1).argmin() == first


def test_mbar_refuses_a_restraint_that_differs_from_openmms(tmp_path):
    from molsample.umbrella import window_bias
    kt, kappa = 2.5, 20.0
    s = UmbrellaSettings(windows=6, kappa=kappa)
    rng = np.random.default_rng(2)
    files = []
    for k, c in enumerate(window_centres(6)):
        th = np.angle(np.exp(1j * (c + rng.normal(0, 0.4, 500))))
        right = window_bias({"phi": th}, [c], ["phi"], kappa)
        np.savez(tmp_path / f"w{k}.npz", centre=[c], phi=th, psi=rng.uniform(-3, 3, 500),
                 restraint_kj=right if k != 3 else 2 * right)           # window 3: a restraint without the 0.5
        files.append(str(tmp_path / f"w{k}.npz"))
    with pytest.raises(ValueError, match="w3.npz: the OpenMM restraint energy and the MBAR bias differ"):
        mbar_analysis(s, files, kt)
    np.savez(files[3], **{**dict(np.load(files[3])), "restraint_kj": window_bias({"phi": np.load(files[3])["phi"]},
                                                                                  [window_centres(6)[3]], ["phi"], kappa)})
    res, *_ = mbar_analysis(s, files, kt)
    assert len(res["windows"]["g"]) == 6 and 0 < res["overlap"]["scalar"] <= 1


def test_bad_umbrella_settings_give_one_line_errors(tmp_path, capsys):
    from molsample.cli import main
    from molsample.umbrella import all_centres, kappas
    with pytest.raises(ValueError, match="--windows has 3 values for 2"):
        all_centres(UmbrellaSettings(dihedral="phi+psi", windows=(4, 5, 6)))
    with pytest.raises(ValueError, match="--kappa must be positive"):
        kappas(UmbrellaSettings(kappa=-1.0))
    assert all_centres(UmbrellaSettings(dihedral="phi+psi", windows=(4, 3))).shape == (12, 2)
    for argv, flag in ((["--kappa", "abc"], "--kappa"), (["--windows", "1"], "--windows"),
                       (["--ns-per-window", "0"], "--ns-per-window")):
        try:
            code = main(["umbrella", "aldp", *argv, "--out", str(tmp_path / "x.npz")])
        except SystemExit as exc:                        # argparse's range check
            code = exc.code
        assert code == 2
        err = capsys.readouterr().err.strip()
        assert flag in err and len(err.splitlines()) == 1


def test_sample_weights_stay_unbiased_when_windows_decorrelate_differently(tmp_path):
    # as in a grid with a few stuck barrier windows: windows 4-7 hold each draw 25 times in a row (g ~ 25),
    # so MBAR keeps ~25x fewer of their samples; the weights of *all* samples must still describe the
    # unbiased density, which needs every window's full sample count in the mixture, not its kept count
    s, kt, grid, u, files = _exact_windows(tmp_path, seed=5, size=20000, stuck=range(4, 8))
    res, log_w, phi, _ = mbar_analysis(s, files, kt)
    g = np.array(res["windows"]["g"])
    assert g[4:8].min() > 10 and np.median(np.r_[g[:4], g[8:]]) < 2
    w = np.exp(log_w)
    for lo, hi in ((-math.pi, -2.0), (-1.0, 0.0), (0.5, 1.5), (2.0, math.pi)):
        exact = np.exp(-u)[(grid >= lo) & (grid < hi)].sum() / np.exp(-u).sum()
        got = w[(phi >= lo) & (phi < hi)].sum()
        assert abs(got - exact) < 0.1 * exact + 0.002, (lo, hi, got, exact)


def test_decorrelation_follows_the_slowest_observable_the_estimates_depend_on(tmp_path):
    # window 2's peptide-bond torsion creeps slowly (g ~ 50): MBAR must keep only ~N/g of that window; a slowly
    # varying potential energy alone (window 4) is recorded but does not thin a window
    kt, kappa, n_win, n = 2.5, 20.0, 6, 3000
    s = UmbrellaSettings(windows=n_win, kappa=kappa)
    rng = np.random.default_rng(4)
    files = []
    for k, c in enumerate(window_centres(n_win)):
        th = np.angle(np.exp(1j * (c + rng.normal(0, 0.35, n))))
        om = np.pi + rng.normal(0, 0.1, (n, 2))
        en = rng.normal(0, 1, n)
        if k == 2:
            om[:, 0] = np.pi + 0.3 * np.sin(np.repeat(rng.normal(size=n // 50), 50))
        if k == 4:
            en = np.repeat(rng.normal(size=n // 50), 50)
        np.savez(tmp_path / f"w{k}.npz", centre=[c], phi=th, psi=rng.uniform(-3, 3, n), omega=om, energy=en,
                 chirality_flipped=np.zeros((n, 1), bool))
        files.append(str(tmp_path / f"w{k}.npz"))
    res, *_ = mbar_analysis(s, files, kt)
    w = res["windows"]
    assert w["slowest_observable"][2] == "omega" and w["n_decorrelated"][2] < n / 20
    assert w["g_by_observable"]["energy"][4] > 20 and w["n_decorrelated"][4] > n / 3
    assert max(w["g"][k] for k in (0, 1, 3, 5)) < 3


def test_residue_selects_each_residue_backbone_of_a_longer_peptide(tmp_path):
    # ala3 has three (phi, psi) pairs; --residue k restrains the k-th, whose atoms are mdtraj's k-th phi and psi,
    # and the run records which residue its estimates belong to
    import mdtraj
    from molsample.targets import load_target
    from molsample.umbrella import backbone_residues, dihedral_atoms, residue_name
    t = load_target("ala3")
    traj = mdtraj.Trajectory(np.asarray(t.positions, dtype=np.float32)[None], t.topology)
    phi_idx, _ = mdtraj.compute_phi(traj)
    psi_idx, _ = mdtraj.compute_psi(traj)
    assert [r[0] for r in backbone_residues(t.topology)] == ["ALA2", "ALA3", "ALA4"]
    for k in (1, 2, 3):
        assert dihedral_atoms(t.topology, "phi", k) == phi_idx[k - 1].tolist()
        assert dihedral_atoms(t.topology, "psi", k) == psi_idx[k - 1].tolist()
        assert residue_name(t.topology, k) == f"ALA{k + 1}"
    with pytest.raises(ValueError, match="between 1 and 3"):
        dihedral_atoms(t.topology, "phi", 4)
    aldp = load_target("aldp")
    assert dihedral_atoms(aldp.topology, "phi") == dihedral_atoms(aldp.topology, "phi", 1)
    with pytest.raises(ValueError, match="between 1 and 1"):
        residue_name(aldp.topology, 2)
    s = UmbrellaSettings(system="ala3", residue=3, windows=2, kappa=5.0, ns_per_window=0.002, equilibration_ps=0.5,
                         steer_ps=1.0, sample_every=20, frame_every=200)
    meta = run_umbrella(s, tmp_path / "u.npz", workers=1, progress=False)
    assert meta["estimates"]["residue"] == "ALA4" and meta["settings"]["residue"] == 3
    w = np.load(next((tmp_path / "u.windows").glob("window_*.npz")))
    from molsample.umbrella import dihedral
    assert np.allclose(w["phi"][::10], dihedral(w["xyz"].astype(np.float64), dihedral_atoms(t.topology, "phi", 3)),
                       atol=1e-5)
    # compare reads the reference's residue and measures the sample's angles of that residue, not the first one's
    from molsample.analysis.compare import compare
    from molsample.analysis.ensembles import Ensemble, load_ensemble
    ref = load_ensemble([tmp_path / "u.npz"], t)
    x = w["xyz"].astype(np.float64)
    sample = Ensemble.from_samples(x, None, t, "frames")
    assert np.allclose(sample.phi, dihedral(x, dihedral_atoms(t.topology, "phi", 1)))
    m = compare(sample, ref, t)
    assert m["residue"] == "ALA4"
    assert np.allclose(sample.phi, dihedral(x, dihedral_atoms(t.topology, "phi", 3)))
    other = load_ensemble([tmp_path / "u.npz"], t)
    other.external["residue"] = "ALA3"
    with pytest.raises(ValueError, match="different residues"):
        compare(other, ref, t)


def test_runs_of_different_residues_are_not_pooled():
    from molsample.analysis.reference import combine_estimates
    def run(residue, df):
        e = {"dF_phi_positive_minus_negative_kT": {"value": df, "stderr": 0.2},
             "p_phi_positive": {"value": 1 / (1 + math.exp(df)), "stderr": 0.01},
             "basins": {"alpha_L": {"value": 0.02, "stderr": 0.005}}}
        return {**e, "residue": residue} if residue else e
    both = combine_estimates([run("ALA3", 4.0), run("ALA3", 5.0)])
    assert both["residue"] == "ALA3" and both["dF_phi_positive_minus_negative_kT"]["value"] == pytest.approx(4.5)
    assert "residue" not in combine_estimates([run(None, 4.0), run(None, 5.0)])
    with pytest.raises(ValueError, match="different residues"):
        combine_estimates([run("ALA2", 4.0), run("ALA3", 5.0)])
    with pytest.raises(ValueError, match="different residues"):
        combine_estimates([run(None, 4.0), run("ALA3", 5.0)])

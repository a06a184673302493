"""Parallel tempering: the ladder, MBAR over temperatures against closed-form answers, kill -9 and
resume, and clean errors on bad input."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from molsample.cli import main
from molsample.replica import (PTSettings, latest_snapshot, mbar_temperatures, parse_temperatures, read_storage,
                               round_trips, run_directory, run_pt, run_pt_system)
from molsample.targets import load_target
from molsample.targets.openmm_target import kt_kj_per_mol

ROOT = Path(__file__).resolve().parents[1]

# one particle: an asymmetric double well along x, harmonic in y and z (kJ/mol, nm)
S, A, B, KYZ, MASS = 0.05, 3.0, 1.0, 1000.0, 10.0


def u_x(x):
    return A * ((x / S) ** 2 - 1) ** 2 + B * x / S


def exact(temperature):
    """p(x > 0) and <E> by quadrature; y and z add k_B T (two harmonic degrees of freedom)."""
    g = np.linspace(-6 * S, 6 * S, 200001)
    u = u_x(g)
    w = np.exp(-(u - u.min()) / kt_kj_per_mol(temperature))
    return w[g > 0].sum() / w.sum(), (w * u).sum() / w.sum() + kt_kj_per_mol(temperature)


def particle_system():
    import openmm
    system = openmm.System()
    system.addParticle(MASS)
    force = openmm.CustomExternalForce(f"{A}*((x/{S})^2-1)^2 + {B}*x/{S} + 0.5*{KYZ}*(y^2+z^2)")
    force.addParticle(0, [])
    system.addForce(force)
    return system


def test_geometric_ladder_and_explicit_list():
    t = parse_temperatures("300:700:8")
    assert len(t) == 8 and t[0] == 300.0 and t[-1] == 700.0
    ratios = np.array(t[1:]) / np.array(t[:-1])
    assert np.allclose(ratios, (700 / 300) ** (1 / 7), rtol=1e-12)
    assert parse_temperatures("300, 350,410") == (300.0, 350.0, 410.0)
    assert parse_temperatures("300:400:2") == (300.0, 400.0)
    for bad, why in [("300:700:1", "n >= 2"), ("700:300:8", "Tmin < Tmax"), ("0:300:4", "Tmin < Tmax"),
                     ("300:700", "Tmin:Tmax:n"), ("300:700:2.5", "Tmin:Tmax:n"), ("abc", "Tmin:Tmax:n"),
                     ("300,300", "strictly increasing"), ("400,300", "strictly increasing"),
                     ("-5,300", "> 0"), ("300", "at least 2"), ("300,nan", "finite")]:
        with pytest.raises(ValueError, match=why):
            parse_temperatures(bad)


def test_round_trips_count_lowest_highest_lowest():
    # replica 0: 0 1 2 1 0 1 2 2 1 0 -> two trips; replica 1 starts at the top: one trip once it has been at 0
    s0 = [0, 1, 2, 1, 0, 1, 2, 2, 1, 0]
    s1 = [2, 1, 0, 1, 2, 1, 0, 0, 1, 2]
    s2 = [1, 2, 1, 2, 1, 2, 1, 1, 2, 1]          # never at the lowest: none
    assert round_trips(np.array([s0, s1, s2]).T, 3).tolist() == [2, 1, 0]


def test_mbar_over_temperatures_on_exact_samples():
    # independent samples of x from the closed-form density at each temperature (no dynamics)
    temps = (300.0, 360.0, 430.0, 520.0)
    rng = np.random.default_rng(3)
    grid = np.linspace(-6 * S, 6 * S, 40001)
    xs = []
    for t in temps:
        w = np.exp(-(u_x(grid) - u_x(grid).min()) / kt_kj_per_mol(t))
        xs.append(rng.choice(grid, 3000, p=w / w.sum()))
    x = np.stack(xs, axis=1)
    energy = u_x(x)                                   # y and z left out here: E is the x part alone
    for target in (300.0, 400.0):                     # in the ladder, and between two rungs
        m = mbar_temperatures(energy, temps, target, {"p": x > 0}, n_boot=30)["observables"]
        p_exact, e_exact = exact(target)
        e_exact -= kt_kj_per_mol(target)
        assert abs(m["p"]["value"] - p_exact) < 4 * m["p"]["stderr"] and m["p"]["stderr"] < 0.01
        e = m["mean_energy_kj_per_mol"]
        assert abs(e["value"] - e_exact) < 4 * e["stderr"] and e["stderr"] < 0.1
        assert 0.3 < m["p"]["stderr_bootstrap"] / m["p"]["stderr"] < 3       # the second check agrees
    # a density that does not match the data must fail: the estimate at 300 K is not the one at 520 K
    m = mbar_temperatures(energy, temps, 300.0, {"p": x > 0}, n_boot=0)["observables"]
    assert abs(m["p"]["value"] - exact(520.0)[0]) > 10 * m["p"]["stderr"]


def test_pt_on_a_particle_reproduces_closed_form_populations_and_energies(tmp_path):
    settings = PTSettings(system="particle", ns=0.05, temperatures=(300.0, 380.0, 480.0, 600.0), exchange_ps=0.05,
                          friction_per_ps=10.0, equilibration_ps=1.0, checkpoint_every=400)
    run_pt_system(particle_system(), np.array([[-S, 0.0, 0.0]]), settings, tmp_path / "w", show_progress=False)
    d = read_storage(tmp_path / "w")
    assert d["energy_kj_per_mol"].shape == (1000, 4)
    x = d["positions"][np.arange(1000)[:, None], d["replica"]][..., 0, 0]
    # the stored energy of the sample at each temperature is the potential of its stored position
    xyz = d["positions"][np.arange(1000)[:, None], d["replica"]][..., 0, :]
    e_direct = u_x(xyz[..., 0]) + 0.5 * KYZ * (xyz[..., 1] ** 2 + xyz[..., 2] ** 2)
    assert np.allclose(e_direct, d["energy_kj_per_mol"], atol=1e-3)
    for target in (300.0, 420.0):
        m = mbar_temperatures(d["energy_kj_per_mol"], d["temperatures"], target, {"p": x > 0}, [x],
                              n_boot=40)["observables"]
        p_exact, e_exact = exact(target)
        for name, ref, scale in (("p", p_exact, 0.04), ("mean_energy_kj_per_mol", e_exact, 0.5)):
            v = m[name]
            err = max(v["stderr"], v["stderr_bootstrap"])
            assert abs(v["value"] - ref) < 4 * err and v["stderr"] < scale, (name, target, v, ref)
    acc = np.array([d["accepted"][i, i + 1] / d["proposed"][i, i + 1] for i in range(3)])
    assert np.all((acc > 0.2) & (acc < 1.0))
    assert round_trips(d["state"], 4).sum() >= 5


def _pt_args(out, *extra):
    return ["pt", "aldp-vacuum", "--ns", "0.1", "--temperatures", "300:450:3", "--exchange-ps", "0.5",
            "--equilibration", "1", "--checkpoint-every", "20", "--out", str(out), "--quiet", *extra]


def test_kill_9_then_resume_neither_loses_nor_duplicates_iterations(tmp_path, capsys):
    out = tmp_path / "v.npz"
    work = run_directory(out)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "molsample.cli", *_pt_args(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    try:
        while True:
            snap = latest_snapshot(work) if work.is_dir() else None
            if snap is not None and int(snap.name.split("_")[1]) >= 40:
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.time() - t0 < 90, "no snapshot in time"
            time.sleep(0.05)
        time.sleep(0.13)                              # somewhere inside the next segment (or its snapshot)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = read_storage(work)
    k = len(before["iterations"])
    assert 40 <= k < 200 and not out.exists()
    assert main(_pt_args(out)) == 2                   # an existing run is never overwritten
    assert "--resume" in capsys.readouterr().err
    assert main(_pt_args(out, "--resume")) == 0
    after = read_storage(work)
    assert after["iterations"].tolist() == list(range(1, 201))
    assert np.array_equal(after["energy_kj_per_mol"][:k], before["energy_kj_per_mol"])   # nothing rewritten
    assert np.array_equal(after["state"][:k], before["state"])
    assert len(np.unique(after["energy_kj_per_mol"], axis=0)) == 200                      # no repeated iteration
    assert np.all(after["proposed"].sum() >= 200)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["n_iterations"] == 200 and meta["complete"] and meta["openmmtools_version"]
    # the results file: energies by temperature match the force field on the stored 300 K frames
    with np.load(out, allow_pickle=False) as d:
        assert d["energy_kj_per_mol"].shape == (200, 3) and d["phi"].shape == (200, 3)
        target = load_target("aldp-vacuum")
        e = target.energy_kj(torch.as_tensor(d["frames_xyz"], dtype=torch.float64)).numpy()
        assert np.allclose(e, d["energy_kj_per_mol"][d["frames_iteration"] - 1, 0], atol=2e-2)
        est = meta["estimates"]
        assert abs(sum(v["value"] for v in est["basins"].values()) - 1) < 1e-6
        assert est["phi_positive_inefficiency"]["n"] == 200
    # resuming a finished run simulates nothing and gives the same data
    assert main(_pt_args(out, "--resume")) == 0
    assert np.array_equal(read_storage(work)["energy_kj_per_mol"], after["energy_kj_per_mol"])
    # other settings than the run's are refused
    assert main(_pt_args(out, "--resume", "--friction", "2")) == 2
    assert "friction_per_ps" in capsys.readouterr().err


@pytest.mark.parametrize("args, expect", [
    (["--temperatures", "700:300:8"], "--temperatures"),
    (["--temperatures", "300:700:1"], "n >= 2"),
    (["--temperatures", "350:700:4"], "system's temperature 300"),
    (["--ns", "0"], "--ns 0"),
    (["--ns", "-1"], "--ns -1"),
    (["--exchange-ps", "0.0005"], "--exchange-ps"),
    (["--out", "{tmp}/x.h5"], ".npz"),
    (["--resume"], "no parallel-tempering run"),
    (["--platform", "Nope"], "--platform 'Nope'"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, args, expect):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    base = ["pt", "aldp-vacuum", "--ns", "0.01", "--temperatures", "300:400:3", "--out", str(tmp_path / "r.npz"),
            "--quiet"]
    code = main(base + args)
    err = capsys.readouterr().err
    assert code == 2 and expect in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_functions_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="reduced units|no OpenMM form"):
        run_pt(PTSettings(system="lj13", ns=0.01, temperatures=(1.0, 2.0)), tmp_path / "a.npz")
    with pytest.raises(ValueError, match="--ns"):
        run_pt(PTSettings(system="aldp", ns=float("nan"), temperatures=(300.0, 400.0)), tmp_path / "a.npz")
    with pytest.raises(FileNotFoundError, match="resume"):
        run_pt(PTSettings(system="aldp", ns=0.01, temperatures=(300.0, 400.0)), tmp_path / "a.npz", resume=True)
    (tmp_path / "b.pt").mkdir()
    with pytest.raises(FileExistsError, match="--resume"):
        run_pt(PTSettings(system="aldp", ns=0.01, temperatures=(300.0, 400.0)), tmp_path / "b.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.pt"]


@pytest.mark.slow
def test_repeated_kills_at_random_moments_including_setup_and_snapshots(tmp_path):
    out = tmp_path / "v.npz"
    work = run_directory(out)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    args = ["pt", "aldp-vacuum", "--ns", "0.3", "--temperatures", "300:450:3", "--exchange-ps", "0.5",
            "--equilibration", "2", "--checkpoint-every", "7", "--out", str(out), "--quiet"]
    rng = np.random.default_rng(0)
    seen = None
    for i in range(8):
        proc = subprocess.Popen([sys.executable, "-m", "molsample.cli", *args, *(["--resume"] if i else [])],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(2.0, 7.0))             # imports take ~3 s: some kills land in the setup
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if latest_snapshot(work) is not None:
            now = read_storage(work)["energy_kj_per_mol"]
            if seen is not None:                      # what was snapshotted before is never rewritten
                assert len(now) >= len(seen) and np.array_equal(now[:len(seen)], seen)
            seen = now
    assert main(args + ["--resume"]) == 0
    final = read_storage(work)
    assert final["iterations"].tolist() == list(range(1, 601))
    assert len(np.unique(final["energy_kj_per_mol"], axis=0)) == 600
    if seen is not None:
        assert np.array_equal(final["energy_kj_per_mol"][:len(seen)], seen)


def test_a_peptide_with_several_residues_gets_each_residues_phi_positive_state(tmp_path):
    """ala3 (three alanines): one MBAR estimate per residue, whose first equals the (phi, psi) pair that
    every other figure uses, and the per-residue indicators match mdtraj's phi of the stored conformations."""
    import mdtraj
    from molsample.replica import analyse_run
    settings = PTSettings(system="ala3", ns=0.006, temperatures=(300.0, 400.0), exchange_ps=0.5,
                          equilibration_ps=0.5, checkpoint_every=4)
    work = tmp_path / "ala3.pt"
    target = load_target("ala3")
    run_pt_system(target.openmm_system()[0], target.positions, settings, work, show_progress=False)
    res, arrays = analyse_run(work, target, n_boot=5)
    per = res["per_residue_phi_positive"]
    assert list(per) == ["ALA2", "ALA3", "ALA4"]
    first = per["ALA2"]["p_phi_positive"]
    assert first["value"] == pytest.approx(res["p_phi_positive"]["value"], abs=1e-12)
    d = read_storage(work)
    xyz = d["positions"][np.arange(len(d["iterations"]))[:, None], d["replica"]]
    _, phi = mdtraj.compute_phi(mdtraj.Trajectory(xyz.reshape(-1, *xyz.shape[2:]), target.topology))
    assert phi.shape[1] == 3
    for j, name in enumerate(per):
        p = per[name]["p_phi_positive"]["value"]
        assert 0.0 <= p <= 1.0
        if ((phi[:, j] > 0) == 0).all():          # never visited: the estimate is exactly zero
            assert p == 0.0
